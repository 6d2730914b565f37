"""The Python half of scripts/gpu_check.sh: one part of the GPU check per subcommand.

    python scripts/gpu_check.py env OUT_DIR               versions, GPU, clocks, driver, roofline profile -> env.json
    python scripts/gpu_check.py model OUT_DIR [--smoke]   the fast model: eager program, cuda_graph -> model.jsonl
    python scripts/gpu_check.py peers OUT_DIR [--smoke]   the reference eager (channels_last, cudnn.benchmark),
                                                          under a CUDA graph, torch.compile max-autotune -> peers.jsonl
    python scripts/gpu_check.py kernels OUT_DIR           per-step device times vs PREDICTIONS -> kernels.jsonl
    python scripts/gpu_check.py ops OUT_DIR [--smoke]     fused ops and residual blocks vs ATen/cuDNN -> ops.jsonl
    python scripts/gpu_check.py sanitizer-probe OUT_DIR   exit 1 (reason printed) where compute-sanitizer is refused

scripts/gpu_check_report.py turns these files into summary.json and summary.md. Every GPU part runs
bf16 first, then TF32, then fp32: the part a time box cuts is the least wanted.

Timing parts write one JSON line per measured row as soon as it is measured, so a part that the
shell script stops at its time box keeps what it measured. Timing is shg_fast.benchmarking's
(CUDA events, warm-up, median). On a CPU (``--smoke``, or no GPU) the parts run tiny cases so the
code paths are exercised; those rows are marked ``smoke`` and are not measurements of anything.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
from typing import Callable

import torch

from shg_fast import benchmarking
from shg_fast.backends import BackendUnavailableError
from shg_fast.benchmarking import BenchConfig, precision, time_calls, timing_summary
from shg_fast.folding import FoldedResidual
from shg_fast.ops import (conv_bn_relu, conv_bn_relu_reference, decode_heatmaps, decode_heatmaps_reference,
                          residual_block, residual_block_reference, upsample_add, upsample_add_reference)
from shg_fast.reference import Residual, StackedHourglass
from shg_fast.tolerances import max_rel_error, randomize_batchnorm

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
#: What each timing part covers on a GPU and in a CPU smoke run.
GPU_PLAN = dict(dtypes=("bf16", "tf32", "fp32"), batches=(1, 64), warmup=3, repeats=20,
                backends=("cuda", "triton"), stacks=8, size=256)
SMOKE_PLAN = dict(dtypes=("fp32",), batches=(1,), warmup=0, repeats=1, backends=("cpu",), stacks=1, size=64)


def _write_row(path: pathlib.Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


# ---------------------------------------------------------------- env

def nvidia_smi() -> dict:
    """Driver, clocks and power from nvidia-smi (used when nvidia-ml-py is not installed)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"nvidia_smi": "not on PATH"}
    fields = ("name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,power.limit,"
              "temperature.gpu")
    out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0:
        return {"nvidia_smi": f"failed: {out.stderr.strip()[:200]}"}
    return dict(zip(fields.split(","), (v.strip() for v in out.stdout.splitlines()[0].split(","))))


def cmd_env(out: pathlib.Path) -> int:
    env = benchmarking.environment(DEVICE)
    if ON_GPU and "nvml" in env.get("gpu", {}):  # nvidia-ml-py missing or unusable
        env["nvidia_smi"] = nvidia_smi()
    env["numpy"] = __import__("numpy").__version__
    from shg_fast import _extension
    from shg_fast.backends import backend_status

    env["extension"] = _extension.load_error() or "loaded"
    env["extension_cuda_kernels"] = _extension.has_kernel("residual_block", "CUDA")
    env["backends"] = {name: (why or "can run") for name, why in backend_status(DEVICE).items()}
    env["roofline_profile"] = _use_device_rates()
    (out / "env.json").write_text(json.dumps(env, indent=2, default=str) + "\n", encoding="utf-8")
    for key, value in env.items():
        print(f"{key}: {value}")
    return 0


def _use_device_rates() -> dict:
    """Point shg_fast.roofline at this GPU's rates (H200 without one); the profile and why."""
    from shg_fast import roofline

    roofline.use_device(torch.cuda.get_device_name() if ON_GPU else None)
    return {k: roofline.RATES[k] for k in ("device", "device_reason", "device_source", "matrix_tflops",
                                               "copy_tbps")}


# ---------------------------------------------------------------- ops

def residual_shapes(stacks: int, size: int) -> list[tuple[int, int, int, int]]:
    """Every distinct (C_in, C_out, H, W) a Residual of the network sees for one ``size``² image."""
    shapes: dict[tuple[int, int, int, int], None] = {}
    with torch.device("meta"):
        model = StackedHourglass(num_stacks=stacks).eval()
        x = torch.empty(1, 3, size, size)

    def record(_module, inputs, output):
        _, c, h, w = inputs[0].shape
        shapes[(c, output.shape[1], h, w)] = None

    for module in model.modules():
        if isinstance(module, Residual):
            module.register_forward_hook(record)
    with torch.no_grad():
        model(x)
    return list(shapes)


def _rand(*shape, dtype=torch.float32):
    return (torch.rand(*shape, device=DEVICE) * 2 - 1).to(dtype)


def block_predictions(cin: int, cout: int, h: int, w: int, dtype_name: str, batch: int, pool: bool = False) -> dict:
    """PREDICTED ms per batch of one residual block per backend (shg_fast.roofline, this GPU's profile), and the
    CUDA kernel's tiling (with whether its CTAs hold their whole weight share: ``resident``, else ``streamed``),
    to stand next to the measurement (square maps: max(h, w); ``pool``: the input read 2x2 max-pooled)."""
    from shg_fast.roofline import block_prediction, triton_block_prediction

    size = max(h, w)
    cuda = block_prediction(cin, cout, size, batch, dtype_name, False, pool)
    triton = triton_block_prediction(cin, cout, size, batch, dtype_name, False, pool)
    config = cuda["config"]
    weights = "resident" if config["resident_weights"] else "streamed"
    return {"cuda": dict(predicted_ms=cuda["predicted_us"] / 1e3, roofline_ms=cuda["roofline_us"] / 1e3,
                         tiling=f"S{config['tile']} R{config['cluster']} {weights}"),
            "triton": dict(predicted_ms=triton["predicted_us"] / 1e3, roofline_ms=cuda["roofline_us"] / 1e3),
            "aten": dict(roofline_ms=cuda["roofline_us"] / 1e3)}


def _op_cases(plan: dict, smoke: bool):
    """``(op, shape label, make, predict)`` per case; ``make(dtype, batch)`` builds the inputs and returns
    ``(fused(backend), aten(), truth(), flops per batch element or None)``: the fused op on a backend,
    its ATen/cuDNN twin in ``dtype``, and that twin in float64 (the ground truth); ``predict(dtype name,
    batch)`` gives the PREDICTED times per backend (residual blocks) or is None."""
    shapes = residual_shapes(plan["stacks"], plan["size"])
    pooled = [s for s in shapes if s[0] == s[1]]  # the blocks after a max-pool: identity skips
    if smoke:
        shapes = [min(shapes, key=lambda s: s[0] * s[1] * s[2] * s[3])]
        pooled = [min(pooled, key=lambda s: s[0] * s[1] * s[2] * s[3])]
    for cin, cout, h, w in shapes:
        def make(dtype, batch, cin=cin, cout=cout, h=h, w=w):
            module = randomize_batchnorm(Residual(cin, cout).eval(), seed=0)
            block64 = FoldedResidual.from_module(module).to(device=DEVICE, dtype=torch.float64)
            x = _rand(batch, cin, h, w, dtype=torch.float64).to(memory_format=torch.channels_last)
            block, xd = block64.to(dtype), x.to(dtype)
            mid = cout // 2
            flops = 2 * (cin * mid + mid * mid * 9 + mid * cout + (cin * cout if cin != cout else 0)) * h * w
            return (lambda backend: residual_block(xd, block, backend=backend), lambda: residual_block_reference(xd, block),
                    lambda: residual_block_reference(x, block64), flops)
        yield ("residual_block", f"{cin}->{cout} @ {h}x{w}", make,
               lambda dtype_name, batch, cin=cin, cout=cout, h=h, w=w: block_predictions(cin, cout, h, w, dtype_name,
                                                                                         batch))
    for cin, cout, h, w in pooled:
        def make_pool(dtype, batch, cin=cin, cout=cout, h=h, w=w):
            module = randomize_batchnorm(Residual(cin, cout).eval(), seed=0)
            block64 = FoldedResidual.from_module(module).to(device=DEVICE, dtype=torch.float64)
            # an odd stored map: the 2x2/stride-2 pool's floor drops its last row and column
            x = _rand(batch, cin, 2 * h + 1, 2 * w + 1, dtype=torch.float64).to(memory_format=torch.channels_last)
            block, xd = block64.to(dtype), x.to(dtype)
            mid = cout // 2
            flops = 2 * (cin * mid + mid * mid * 9 + mid * cout) * h * w
            return (lambda backend: residual_block(xd, block, pool_input=True, backend=backend),
                    lambda: residual_block_reference(xd, block, pool_input=True),
                    lambda: residual_block_reference(x, block64, pool_input=True), flops)
        yield ("residual_block_pool_input", f"{cin}->{cout} @ {h}x{w} (pooled from {2 * h + 1}x{2 * w + 1})", make_pool,
               lambda dtype_name, batch, cin=cin, cout=cout, h=h, w=w: block_predictions(cin, cout, h, w, dtype_name,
                                                                                         batch, pool=True))
    sizes = (8,) if smoke else (64,)
    for s in (8,) if smoke else (64, 32, 16, 8):
        def make_up(dtype, batch, s=s):
            low, skip = _rand(batch, 256, s // 2, s // 2, dtype=torch.float64), _rand(batch, 256, s, s, dtype=torch.float64)
            lo, sk = low.to(dtype), skip.to(dtype)
            return (lambda backend: upsample_add(lo, sk, backend=backend), lambda: upsample_add_reference(lo, sk),
                    lambda: upsample_add_reference(low, skip), None)
        yield "upsample_add", f"256 @ {s}x{s}", make_up, None
    for s in sizes:
        def make_c1(dtype, batch, s=s):
            x, w, b = _rand(batch, 256, s, s, dtype=torch.float64), _rand(128, 256, 1, 1, dtype=torch.float64) / 16, \
                _rand(128, dtype=torch.float64)
            scale, shift = torch.rand(256, device=DEVICE, dtype=torch.float64) + 0.5, _rand(256, dtype=torch.float64)
            kw = dict(in_scale=scale, in_shift=shift, in_relu=True, out_relu=True)
            kwd = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}
            xd, wd, bd = x.to(dtype), w.to(dtype), b.to(dtype)
            return (lambda backend: conv_bn_relu(xd, wd, bd, backend=backend, **kwd),
                    lambda: conv_bn_relu_reference(xd, wd, bd, **kwd), lambda: conv_bn_relu_reference(x, w, b, **kw),
                    2 * 256 * 128 * s * s)
        yield "conv1x1_bn_relu", f"256->128 @ {s}x{s}", make_c1, None

        def make_c3(dtype, batch, s=s):
            x, w, b = _rand(batch, 128, s, s, dtype=torch.float64), _rand(128, 128, 3, 3, dtype=torch.float64) / 32, \
                _rand(128, dtype=torch.float64)
            xd, wd, bd = x.to(dtype), w.to(dtype), b.to(dtype)
            return (lambda backend: conv_bn_relu(xd, wd, bd, out_relu=True, backend=backend),
                    lambda: conv_bn_relu_reference(xd, wd, bd, out_relu=True),
                    lambda: conv_bn_relu_reference(x, w, b, out_relu=True), 2 * 128 * 128 * 9 * s * s)
        yield "conv3x3_relu", f"128->128 @ {s}x{s}", make_c3, None

        def make_dec(dtype, batch, s=s):
            hm = _rand(batch, 16, s, s, dtype=torch.float64)
            hd = hm.to(dtype)
            return (lambda backend: decode_heatmaps(hd, backend=backend), lambda: decode_heatmaps_reference(hd, None, []),
                    lambda: decode_heatmaps_reference(hm, None, []), None)
        yield "decode_heatmaps", f"16 maps @ {s}x{s}", make_dec, None


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def cmd_ops(out: pathlib.Path, smoke: bool) -> int:
    plan = SMOKE_PLAN if smoke else GPU_PLAN
    _use_device_rates()
    path = out / "ops.jsonl"
    path.unlink(missing_ok=True)
    torch.manual_seed(0)
    with torch.inference_mode():
        for op, shape, make, predict in _op_cases(plan, smoke):
            for dtype_name in plan["dtypes"]:
                with precision(dtype_name) as dtype:
                    for batch in plan["batches"]:
                        fused, aten, truth, flops = make(dtype, batch)
                        ref_out = _first(truth())
                        base = {"op": op, "shape": shape, "dtype": dtype_name, "batch": batch, "device": DEVICE,
                                "smoke": smoke}
                        predicted = predict(dtype_name, batch) if predict is not None else {}
                        timings = {}
                        for backend, fn in [("aten", aten)] + [(b, lambda b=b: fused(b)) for b in plan["backends"]]:
                            row = dict(base, backend=backend, **{f"pred_{k}": v for k, v in
                                                                 predicted.get(backend, {}).items()})
                            try:
                                got = _first(fn())
                            except BackendUnavailableError as exc:
                                _write_row(path, dict(row, status="skipped", reason=str(exc)[:300]))
                                continue
                            except Exception as exc:  # a failing kernel is a result, not the end of the part
                                _write_row(path, dict(row, status="error", reason=f"{type(exc).__name__}: {exc}"[:500]))
                                continue
                            row["max_rel_error_vs_fp64"] = max_rel_error(got.double(), ref_out.double())
                            row.update(timing_summary(time_calls(lambda _: fn(), got, plan["warmup"], plan["repeats"]),
                                                      batch, flops))
                            timings[backend] = row["ms_per_batch_median"]
                            if "aten" in timings and backend != "aten":
                                row["speedup_vs_aten"] = timings["aten"] / row["ms_per_batch_median"]
                            _write_row(path, dict(row, status="ok"))
    return 0


# ---------------------------------------------------------------- model

def _bench_cells(out_file: pathlib.Path, plan: dict, variant_names: tuple[str, ...]) -> int:
    """run_benchmark one (dtype, batch) cell at a time, appending each report's rows."""
    out_file.unlink(missing_ok=True)
    for dtype_name in plan["dtypes"]:
        for batch in plan["batches"]:
            config = BenchConfig(device=DEVICE, stacks=plan["stacks"], size=plan["size"], batches=(batch,),
                                 dtypes=(dtype_name,), variants=variant_names, warmup=plan["warmup"],
                                 repeats=max(plan["repeats"] // 2, 1), check_images=1)
            report = benchmarking.run_benchmark(config, progress=False)
            for row in report["results"]:
                _write_row(out_file, dict(row, status="ok", stacks=plan["stacks"], size=plan["size"],
                                          smoke=plan is SMOKE_PLAN))
            for row in report["errors"]:
                _write_row(out_file, dict(row, status="error", stacks=plan["stacks"], size=plan["size"]))
    return 0


def cmd_model(out: pathlib.Path, smoke: bool) -> int:
    """The fast model as a user runs it: the eager program and the CUDA graph, at each batch."""
    return _bench_cells(out / "model.jsonl", SMOKE_PLAN if smoke else GPU_PLAN, ("fast", "cuda_graph"))


# ---------------------------------------------------------------- peers

#: What a user would pick instead of shg_fast, in the order they are timed.
PEERS = ("reference_channels_last", "reference_cuda_graph", "compile_max_autotune")


def _peer(name: str, model: torch.nn.Module, x: torch.Tensor):
    """The callable of one peer, or raise RuntimeError saying why it cannot run here."""
    from shg_fast import cuda_graph

    if name == "reference_channels_last":
        return model
    if not ON_GPU:
        raise RuntimeError("needs a CUDA GPU" + (" (max-autotune is the GPU peer; on a small CPU the compile "
                                                  "takes minutes)" if name.startswith("compile") else ""))
    if name == "reference_cuda_graph":
        return cuda_graph(model, x)
    torch._dynamo.reset()
    return torch.compile(model, mode="max-autotune", dynamic=False)


def cmd_peers(out: pathlib.Path, smoke: bool) -> int:
    """The reference as a careful user would run it, next to the fast model's rows (model.jsonl).

    Eager with channels_last weights and input and ``cudnn.benchmark``; that under a CUDA graph;
    ``torch.compile(mode="max-autotune")``. The compiles come last (minutes for the 8-stack model):
    each writes a ``started`` row first, so one cut by the part's time box shows as ``timeout``.
    """
    from shg_fast.benchmarking import example_input

    plan = SMOKE_PLAN if smoke else GPU_PLAN
    path = out / "peers.jsonl"
    path.unlink(missing_ok=True)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    flops = benchmarking.conv_macs(plan["stacks"], plan["size"]) * 2
    cells = [(peer, d, b) for peer in PEERS[:2] for d in plan["dtypes"] for b in plan["batches"]]
    cells += [(PEERS[2], d, b) for d in plan["dtypes"] for b in plan["batches"]]
    for peer, dtype_name, batch in cells:
        row = dict(variant=peer, dtype=dtype_name, batch=batch, stacks=plan["stacks"], size=plan["size"],
                   device=DEVICE, smoke=smoke)
        with precision(dtype_name) as dtype, torch.inference_mode():
            model = randomize_batchnorm(StackedHourglass(num_stacks=plan["stacks"]).eval(), seed=0)
            model = model.to(device=DEVICE, dtype=dtype, memory_format=torch.channels_last)
            x = example_input(batch, plan["size"], DEVICE, dtype).contiguous(memory_format=torch.channels_last)
            try:
                fn = _peer(peer, model, x)
            except RuntimeError as exc:
                _write_row(path, dict(row, status="skipped", reason=str(exc)[:300]))
                continue
            if peer.startswith("compile"):
                _write_row(path, dict(row, status="started"))
            try:
                seconds = time_calls(fn, x, plan["warmup"] + 1, max(plan["repeats"] // 2, 1))
            except Exception as exc:  # a failing peer is a result, not the end of the part
                _write_row(path, dict(row, status="error", reason=f"{type(exc).__name__}: {exc}"[:500]))
                continue
            _write_row(path, dict(row, status="ok", **timing_summary(seconds, batch, flops)))
    return 0


# ---------------------------------------------------------------- kernels

def _step_prediction(step, batch: int, mode: str) -> dict:
    """The PREDICTION for one program step from its shape key (shg_fast.roofline), or {} for other ops."""
    from shg_fast.roofline import block_prediction, conv_prediction, triton_block_prediction

    dims = dict(part.split("=") if "=" in part else (part, True) for part in step.shape.split())
    num = {k: int(v) for k, v in dims.items() if v is not True}
    if step.op == "residual_block":
        args = (num["cin"], num["cout"], max(num["h"], num["w"]), batch, mode, "up" in dims, "pool" in dims)
        predicted = block_prediction(*args) if step.tactic.backend == "cuda" else triton_block_prediction(*args)
        return dict(predicted_us=predicted["predicted_us"], kernel_us=predicted["kernel_us"])
    if step.op == "conv":
        k, stride = num["k"], num["s"]
        size = (num["h"] + 2 * (k // 2) - k) // stride + 1
        conv = dict(k=k, stride=stride, c1=num["cin"], c2=0, c_out=num["cout"], size=size, upsample=False,
                    residual=step.name.endswith("merge"), pool_x="pool" in dims)
        predicted = conv_prediction(conv, batch, mode)
        return dict(predicted_us=predicted["predicted_us"], roofline_us=predicted["roofline_us"])
    return {}


def cmd_kernels(out: pathlib.Path) -> int:
    """Per step of the engine's program: the device time of its own kernels against its PREDICTION.

    The kernels are read from the profiler (CUDA activity; device durations, so host overhead and
    launch gaps are not in them) over a few calls of the program, on the weights it prepacked at
    build; the i-th ``launches`` kernels of a call belong to the i-th step (the recorded-GPU launch
    counts). Where a call's kernels do not add up to the program's launch count, the rows are per
    kernel name instead (``mapped: false``).
    """
    from torch.profiler import ProfilerActivity, profile

    from shg_fast import StackedHourglass as Fast
    from shg_fast.benchmarking import example_input

    profile_name = _use_device_rates()["device"]
    path = out / "kernels.jsonl"
    path.unlink(missing_ok=True)
    calls = 3
    for dtype_name in ("bf16", "tf32"):
        for batch in GPU_PLAN["batches"]:
            with precision(dtype_name) as dtype, torch.inference_mode():
                model = Fast(num_stacks=GPU_PLAN["stacks"]).eval().to(device=DEVICE, dtype=dtype)
                x = example_input(batch, GPU_PLAN["size"], DEVICE, dtype)
                program = model.fused_plan().program(x)
                for _ in range(3):
                    program(x)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        program(x)
                    torch.cuda.synchronize()
            kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                             key=lambda e: e.time_range.start)
            base = dict(dtype=dtype_name, batch=batch, profile=profile_name, launches=program.launch_count)
            n = program.launch_count
            if len(kernels) != calls * n:
                by_name: dict[str, list[float]] = {}
                for e in kernels:
                    by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
                for name, times in by_name.items():
                    _write_row(path, dict(base, mapped=False, kernel=name[:120], count=len(times),
                                          device_us_total=sum(times) / calls, status="ok"))
                continue
            i = 0
            for step in program.steps:
                per_call = [sum(k.time_range.elapsed_us() for k in kernels[c * n + i:c * n + i + step.launches])
                            for c in range(calls)]
                i += step.launches
                row = dict(base, mapped=True, step=step.name, op=step.op, shape=step.shape,
                           tactic=step.tactic.describe(), device_us=sorted(per_call)[calls // 2],
                           **_step_prediction(step, batch, dtype_name), status="ok")
                if row.get("predicted_us"):
                    row["measured_over_predicted"] = row["device_us"] / row["predicted_us"]
                _write_row(path, row)
    return 0


# ---------------------------------------------------------------- sanitizer

def cmd_sanitizer_probe() -> int:
    """Whether compute-sanitizer works on this device: a one-allocation program under memcheck, 20 s at most.

    gVisor machines refuse it ('Device not supported', then error 999 at the first allocation).
    """
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    code = "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
    try:
        result = subprocess.run([tool, "--tool", "memcheck", "--error-exitcode", "99", sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"{type(exc).__name__}: {exc}"[:300])
        return 1
    if result.returncode != 0 or "not supported" in result.stdout + result.stderr:
        print(f"exit status {result.returncode}: {(result.stdout + result.stderr).strip()[-300:]}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("env", "model", "peers", "kernels", "ops", "sanitizer-probe"))
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--smoke", action="store_true", help="tiny cases (implied without a GPU)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke or not ON_GPU
    commands: dict[str, Callable[[], int]] = {
        "env": lambda: cmd_env(args.out), "model": lambda: cmd_model(args.out, smoke),
        "peers": lambda: cmd_peers(args.out, smoke), "kernels": lambda: cmd_kernels(args.out),
        "ops": lambda: cmd_ops(args.out, smoke), "sanitizer-probe": cmd_sanitizer_probe,
    }
    return commands[args.part]()


if __name__ == "__main__":
    sys.exit(main())
