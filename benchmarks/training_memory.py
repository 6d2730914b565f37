"""Memory-efficient training vs the reference: saved bytes, peak process memory, step time, parity.

    python3 benchmarks/training_memory.py [--stacks 8 --res 256 --batch 8 --rounds 3] [--out FILE.json]

One run measures, for ``shg_fast.StackedHourglass(memory_efficient=True)`` and the reference
model with the same weights (training mode, float32 parameters, CPU):

* the bytes autograd saves for backward in one training forward (distinct storages passed
  through ``saved_tensors_hooks``; with and without the parameters);
* the peak resident memory of a process running one training step (one subprocess per model,
  ``ru_maxrss``), and that minus the peak of the same process after building the model and data;
* the forward+backward step time, alternating the two models round by round, medians, in float32
  and under autocast bfloat16 (first round of each a warm-up, not counted); ``--time-stacks`` etc.
  time a smaller network where the full one is too slow for the machine;
* gradients and BN running statistics after the float32 steps of the memory-efficient model
  against the reference's (no optimizer step, so both took the same weights and inputs);
* at a network small enough for float64 (``--parity-*``), both models' float32 gradients against
  the float64 reference's: the fp32 gradients of this deep BN network are themselves only good
  to about 1e-1 of a layer's scale, so the memory-efficient error is judged against the reference's.

Ratios are what travel between machines: the script prints and stores them with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shg_fast import StackedHourglass, reference  # noqa: E402
from shg_fast.ops.bn_train import training_backend  # noqa: E402
from shg_fast.tolerances import max_rel_error, randomize_batchnorm  # noqa: E402
from shg_fast.training_ops import saved_tensor_bytes  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def models(args):
    torch.manual_seed(0)
    ref = randomize_batchnorm(reference.StackedHourglass(args.stacks), seed=0)
    fast = StackedHourglass(args.stacks, memory_efficient=True)
    fast.load_state_dict(ref.state_dict())
    return ref.train(), fast.train()


def data(args):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.res, args.res, generator=gen)
    target = torch.rand(args.batch, 16, args.res // 4, args.res // 4, generator=gen)
    return x, target


def step(model, x, target, amp: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        outs = model(x)
    loss = sum(torch.nn.functional.mse_loss(o.float(), target) for o in outs)
    loss.backward()
    return loss.item()


def child(args) -> None:
    """One model, one step; prints the peak RSS after setup and after the steps (KiB)."""
    ref, fast = models(args)
    model = fast if args.child == "fast" else ref
    del ref, fast
    x, target = data(args)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(model, x, target, amp=False)
    print(json.dumps({"setup_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def peak_memory(args) -> dict:
    result = {}
    for kind in ("reference", "fast"):
        cmd = [sys.executable, __file__, "--child", kind, "--stacks", str(args.stacks), "--res", str(args.res),
               "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        result[kind] = json.loads(out)
    return result


def parity(ref, fast) -> dict:
    """Gradients (of the last step of each) and buffers of ``fast`` against ``ref``'s."""
    worst = max(_scaled_errors(fast, ref))
    buffers = dict(fast.named_buffers())
    stats = max(max_rel_error(buffers[n].double(), b.double()) for n, b in ref.named_buffers())
    return {"max_grad_error_scaled": worst, "max_buffer_rel_error": stats}


def _scaled_errors(model, truth) -> list[float]:
    """Per parameter: max |grad - truth grad| / max(|truth grad|, |truth grad of the module's weight|)."""
    grads, modules = dict(model.named_parameters()), dict(truth.named_modules())
    errors = []
    for name, p in truth.named_parameters():
        scale = max(p.grad.abs().max().item(), modules[name.rsplit(".", 1)[0]].weight.grad.abs().max().item())
        errors.append((grads[name].grad.double() - p.grad).abs().max().item() / scale)
    return errors


def parity_float64(args) -> dict:
    """float32 gradients of both models against the float64 reference's, at the ``--parity-*`` network."""
    small = argparse.Namespace(stacks=args.parity_stacks, res=args.parity_res, batch=args.parity_batch)
    ref, fast = models(small)
    truth = reference.StackedHourglass(small.stacks).double().train()
    truth.load_state_dict(ref.state_dict())
    x, target = data(small)
    step(truth, x.double(), target.double(), amp=False)
    result = {"config": vars(small)}
    for kind, model in (("reference", ref), ("fast", fast)):
        step(model, x, target, amp=False)
        errors = _scaled_errors(model, truth)
        result[kind] = {"max_grad_error_scaled": max(errors), "mean_grad_error_scaled": sum(errors) / len(errors)}
    return result


def timings(ref, fast, x, target, rounds: int, amp: bool) -> dict:
    times = {"reference": [], "fast": []}
    for r in range(rounds + 1):
        for kind, model in (("reference", ref), ("fast", fast)) if r % 2 == 0 else (("fast", fast), ("reference", ref)):
            tic = time.perf_counter()
            step(model, x, target, amp)
            if r:  # round 0 warms up
                times[kind].append(time.perf_counter() - tic)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "median_s": med, "ratio_fast_over_reference": med["fast"] / med["reference"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true", help="skip the autocast bfloat16 timing")
    parser.add_argument("--no-memory", action="store_true", help="skip the saved-bytes and peak-memory part")
    parser.add_argument("--parity-stacks", type=int, default=2)
    parser.add_argument("--parity-res", type=int, default=128)
    parser.add_argument("--parity-batch", type=int, default=4)
    parser.add_argument("--no-parity64", action="store_true", help="skip the float64 parity part")
    for name in ("stacks", "res", "batch"):
        parser.add_argument(f"--time-{name}", type=int, help=f"--{name} of the timing and parity part (default the same)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=("reference", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    probe = torch.empty(1, 1, 1, 1)
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "load_average_at_start": os.getloadavg(),
              "cpu_training_kernels": training_backend(probe, probe.dtype),
              "config": {"stacks": args.stacks, "res": args.res, "batch": args.batch, "dtype": "float32"}}
    ratios = result["ratios"] = {}
    if not args.no_memory:
        result["peak_rss"] = rss = peak_memory(args)
        ref, fast = models(args)
        x, _ = data(args)
        saved = result["saved_for_backward"] = {}
        for kind, model in (("reference", ref), ("fast", fast)):
            total, outs = saved_tensor_bytes(model, x)
            del outs
            activations, outs = saved_tensor_bytes(model, x, exclude=list(model.parameters()))
            saved[kind] = {"bytes": total, "bytes_without_parameters": activations}
            del outs
        del ref, fast
        ratios["saved_bytes"] = saved["fast"]["bytes"] / saved["reference"]["bytes"]
        ratios["saved_bytes_without_parameters"] = (saved["fast"]["bytes_without_parameters"]
                                                    / saved["reference"]["bytes_without_parameters"])
        ratios["peak_rss"] = rss["fast"]["peak_kib"] / rss["reference"]["peak_kib"]
        ratios["peak_rss_above_setup"] = ((rss["fast"]["peak_kib"] - rss["fast"]["setup_kib"])
                                          / (rss["reference"]["peak_kib"] - rss["reference"]["setup_kib"]))
    if not args.no_parity64:
        result["parity_vs_float64"] = parity_float64(args)
    for name in ("stacks", "res", "batch"):
        setattr(args, name, getattr(args, f"time_{name}") or getattr(args, name))
    result["time_config"] = {"stacks": args.stacks, "res": args.res, "batch": args.batch}
    ref, fast = models(args)
    x, target = data(args)
    result["time_float32"] = timings(ref, fast, x, target, args.rounds, amp=False)
    result["parity_float32"] = parity(ref, fast)
    ratios["step_time_float32"] = result["time_float32"]["ratio_fast_over_reference"]
    if not args.no_bf16:
        result["time_autocast_bf16"] = timings(ref, fast, x, target, args.rounds, amp=True)
        ratios["step_time_autocast_bf16"] = result["time_autocast_bf16"]["ratio_fast_over_reference"]
    result["load_average_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
