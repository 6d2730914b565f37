"""Timing the Stacked Hourglass variants side by side: the library behind ``shg-fast bench``.

:func:`run_benchmark` times every variant of :mod:`shg_fast.variants` for each (dtype, batch)
of a :class:`BenchConfig` on one device, checks each variant's output against a float64 run
of the reference on the same input (tolerances from :mod:`shg_fast.tolerances`), and returns a
JSON-ready report. :func:`format_table`, :func:`format_markdown` and :func:`plot_report` render it.

Timing: the variants of one (dtype, batch) take turns call by call (:func:`time_round_robin`),
so a shared machine's changing load falls on all of them alike; on a GPU, CUDA events around
each call after a warm-up, synchronised, median of the runs; on a CPU, ``time.perf_counter``
around each call, median of the runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from .machine import cpu_flags, cpu_name
from .reference import StackedHourglass
from .tolerances import max_rel_error, randomize_batchnorm, tolerance
from .variants import PEERS, VARIANTS, build_variant, variant_reasons

__all__ = [
    "PAPER_MS_PER_IMAGE",
    "DTYPES",
    "SCHEMA_VERSION",
    "BenchConfig",
    "default_config",
    "conv_macs",
    "environment",
    "machine_info",
    "cpu_flags",
    "gpu_telemetry",
    "precision",
    "time_calls",
    "time_round_robin",
    "timing_summary",
    "stacked_outputs",
    "example_input",
    "ground_truth",
    "run_benchmark",
    "add_speedups",
    "format_table",
    "format_markdown",
    "plot_report",
]

#: The paper's speed: one prediction, 8 stacks, 256x256, Titan X, original Torch7 code.
PAPER_MS_PER_IMAGE = 75.0
SCHEMA_VERSION = 1

#: Benchmark dtype name -> (tensor dtype, TF32 allowed, tolerance mode in shg_fast.tolerances.TOLERANCES).
DTYPES = {
    "fp32": (torch.float32, False, "float32"),
    "tf32": (torch.float32, True, "tf32"),
    "bf16": (torch.bfloat16, False, "bfloat16"),
}


@dataclasses.dataclass
class BenchConfig:
    """What one benchmark run times.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        stacks: hourglass stacks of the model (8 in the paper).
        size: input height and width (a multiple of 64).
        batches: batch sizes to time.
        dtypes: names from :data:`DTYPES`.
        variants: names from :data:`shg_fast.variants.VARIANTS`; ``cuda_graph`` runs at batch 1 only; a
            variant that cannot run for a dtype here (:func:`shg_fast.variants.variant_reasons`: a peer's
            package missing, no bf16 on this CPU) is skipped with its reason in the report.
        warmup: untimed calls before timing each variant.
        repeats: timed calls; the median is reported.
        check_images: images of each batch compared with the float64 reference (0: the whole batch).
    """

    device: str
    stacks: int
    size: int
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    variants: tuple[str, ...]
    warmup: int
    repeats: int
    check_images: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch.cuda.is_available() is False")
        for name, value, low in (("stacks", self.stacks, 1), ("warmup", self.warmup, 0),
                                 ("repeats", self.repeats, 1), ("check_images", self.check_images, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.size <= 0 or self.size % 64:
            raise ValueError(f"size must be a positive multiple of 64, got {self.size}")
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be positive integers, got {list(self.batches)}")
        for name, given, allowed in (("dtype", self.dtypes, tuple(DTYPES)), ("variant", self.variants, VARIANTS)):
            bad = [g for g in given if g not in allowed]
            if not given or bad:
                raise ValueError(f"unknown {name} {bad or given!r}; expected some of {', '.join(allowed)}")
        if self.device == "cpu" and "tf32" in self.dtypes:
            raise ValueError("dtype tf32 needs a CUDA device (TF32 is a GPU tensor-core mode)")

    def notes(self) -> list[str]:
        """Sentences printed with the results: where this run differs from the paper's setting."""
        notes = []
        if (self.stacks, self.size) != (8, 256):
            notes.append(f"{self.stacks} stack(s) at {self.size}x{self.size}: the paper's 75 ms/image is 8 stacks at "
                         "256x256 on a Titan X, so the 'vs paper' column is not like for like"
                         + (" (CPU default, sized to finish in two minutes on 2 cores; --stacks 8 for the full "
                            "model)" if self.device == "cpu" else ""))
        missing = [v for v in VARIANTS if v not in self.variants and not (self.device == "cuda" and v in PEERS)]
        if missing:
            notes.append(f"not timed: {', '.join(missing)} (add with --variants; torch.compile takes minutes "
                         "to compile on a small CPU)")
        if self.repeats < 10:
            notes.append(f"{self.repeats} timed call(s) per row: a rough figure")
        if self.check_images:
            notes.append(f"outputs checked against float64 on the first {self.check_images} image(s) of each batch")
        return notes


def default_config(device: str, quick: bool = False) -> BenchConfig:
    """The default run for ``device``; ``quick`` trims it to a fast smoke run.

    GPU: 8 stacks, 256x256, batch 1, 8, 32, 64; fp32, TF32, bf16; reference, fast, compile and
    cuda_graph; 10 warm-up and 50 timed calls (quick: batch 1 and 8, no torch.compile, 3 and 10).
    CPU (sized to finish in a few minutes on 2 cores): the full 8-stack model, 256x256, batch 1
    and 4, fp32, reference, fast and the peers ONNX Runtime and OpenVINO (skipped, saying why,
    when not installed; each exports the model once, tens of seconds), 1 warm-up and 5 timed
    calls (quick: 1 stack, 128x128, batch 1, 2 timed calls); the first image of a batch is checked.
    """
    if device == "cuda":
        return BenchConfig(
            device="cuda", stacks=8, size=256, batches=(1, 8) if quick else (1, 8, 32, 64),
            dtypes=("fp32", "tf32", "bf16"),
            variants=("reference", "fast", "cuda_graph") if quick else ("reference", "fast", "compile", "cuda_graph"),
            warmup=3 if quick else 10, repeats=10 if quick else 50,
        )
    return BenchConfig(
        device="cpu", stacks=1 if quick else 8, size=128 if quick else 256, batches=(1,) if quick else (1, 4),
        dtypes=("fp32",), variants=("reference", "fast", *PEERS), warmup=1, repeats=2 if quick else 5,
        check_images=1,
    )


def conv_macs(stacks: int = 8, size: int = 256, num_features: int = 256, num_joints: int = 16,
              num_modules: int = 1) -> int:
    """Multiply-accumulates of every convolution for one ``size x size`` image.

    Counted by running the reference model on the meta device (no memory, no arithmetic):
    ``out_elements * in_channels / groups * kh * kw`` per conv; biases, BN, pooling and adds
    are not counted. 8 stacks at 256x256 gives 27.44 GMAC (54.9 GFLOP at 2 FLOP per MAC).
    """
    with torch.device("meta"):
        model = StackedHourglass(stacks, num_features, num_joints, num_modules).eval()
        x = torch.empty(1, 3, size, size)
    total = 0

    def count(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(x)
    return total


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_telemetry(index: int = 0) -> dict:
    """Driver, SM/memory clocks (MHz), power (W) and temperature (C) from nvidia-ml-py, if installed.

    Every field that cannot be read is left out; ``{"nvml": reason}`` when NVML is unusable.
    ``index`` is taken as the NVML index, which is torch's device index unless
    ``CUDA_VISIBLE_DEVICES`` reorders the GPUs.
    """
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVML missing or no permission: telemetry is optional
        return {"nvml": f"nvmlInit failed: {exc}"}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        readings = {
            "driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
            "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
            "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        }
        info = {}
        for key, read in readings.items():
            try:
                value = read()
            except Exception:  # a field this GPU/driver does not report
                continue
            info[key] = value.decode() if isinstance(value, bytes) else value
        return info
    finally:
        pynvml.nvmlShutdown()


#: Environment variables of the OpenMP/MKL/oneDNN runtimes, recorded with every report.
_THREAD_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "DNNL_", "ONEDNN_")


def environment(device: str) -> dict:
    """Machine, versions and (on a GPU) telemetry for a report; never initialises CUDA for ``cpu``."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": _distribution_version("triton"),
        "cuda": torch.version.cuda,
        "device": device,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # threading settings that change CPU timings (OMP_WAIT_POLICY=PASSIVE: see benchmarks/PERF_NOTES.md)
        "thread_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_THREAD_ENV_PREFIXES)},
    }
    if device == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        env.update(
            device_name=props.name, capability=f"sm_{props.major}{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
            gpu=gpu_telemetry(index),
        )
    else:
        env["device_name"] = env["cpu"]
    return env


#: Telemetry that describes the GPU rather than the moment (clocks in use, power, temperature vary).
_STABLE_GPU_KEYS = ("driver", "max_sm_clock_mhz", "max_mem_clock_mhz", "power_limit_w", "nvml")


def machine_info(device: str) -> dict:
    """What a benchmark ran on, for results kept and compared later: nothing that varies run to run.

    CPU model, feature flags and threads, versions, and on a GPU its name, capability, memory,
    cuDNN, and from nvidia-ml-py the driver, the maximum SM/memory clocks and the power limit
    (the clocks in use, power and temperature of a moment are :func:`gpu_telemetry`'s).
    """
    env = environment(device)
    info = {key: env[key] for key in ("device", "device_name", "cpu", "cpu_threads", "torch", "triton", "cuda",
                                      "capability", "gpu_memory_gib", "cudnn") if key in env}
    info["cpu_flags"] = cpu_flags()
    if "gpu" in env:
        info["gpu"] = {key: env["gpu"][key] for key in _STABLE_GPU_KEYS if key in env["gpu"]}
    return info


@contextlib.contextmanager
def precision(dtype_name: str) -> Iterator[torch.dtype]:
    """Set TF32 on (``tf32``) or off (``fp32``, ``bf16``) for cuDNN and matmuls; yields the tensor dtype."""
    dtype, tf32, _ = DTYPES[dtype_name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch warns that the allow_tf32 flags are legacy
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield dtype
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def time_calls(fn: Callable[[torch.Tensor], object], x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Seconds taken by each of ``repeats`` calls ``fn(x)`` after ``warmup`` untimed ones.

    CUDA inputs: a pair of CUDA events around each call, read after one final synchronise.
    CPU inputs: ``time.perf_counter`` around each call.
    """
    for _ in range(warmup):
        fn(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn(x)
            end.record()
        torch.cuda.synchronize(x.device)
        return [start.elapsed_time(end) / 1000.0 for start, end in events]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def time_round_robin(fns: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, warmup: int,
                     repeats: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per call of each ``fns[name](x)``, the variants taking turns (round robin).

    Each variant gets ``warmup`` untimed calls, then ``repeats`` rounds in which every variant is
    timed once (:func:`time_calls` of one call), so load that comes and goes on a shared machine
    slows every variant alike. Returns ``(times, failed)``: per name the list of seconds, and
    per name that raised, the error (that variant leaves the rotation).
    """
    times = {name: [] for name in fns}
    failed = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in failed:
                continue
            try:
                times[name] += time_calls(fn, x, warmup if not times[name] else 0, 1)
            except Exception as exc:  # reported with the variant; the others keep running
                failed[name] = f"{type(exc).__name__}: {exc}"
    return {n: t for n, t in times.items() if n not in failed}, failed


def timing_summary(seconds: list[float], batch: int, flops_per_image: float | None) -> dict:
    """ms per batch (median, min, max), ms/image, images/s and achieved GFLOP/s from per-call times.

    ``gflop_per_s`` is None when ``flops_per_image`` is None (ops whose work is not FLOPs).
    """
    median = statistics.median(seconds)
    return {
        "runs": len(seconds),
        "ms_per_batch_median": median * 1e3,
        "ms_per_batch_min": min(seconds) * 1e3,
        "ms_per_batch_max": max(seconds) * 1e3,
        "ms_per_image": median * 1e3 / batch,
        "images_per_s": batch / median,
        "gflop_per_s": None if flops_per_image is None else flops_per_image * batch / median / 1e9,
    }


def stacked_outputs(outputs: list[torch.Tensor]) -> torch.Tensor:
    """All stacks' heatmaps as one ``(stacks, N, J, H, W)`` tensor (a copy: CUDA-graph outputs get reused)."""
    return torch.stack([o.detach() for o in outputs]).clone()


def example_input(batch: int, size: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """A reproducible random ``(batch, 3, size, size)`` input in [0, 1)."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    return x.to(device=device, dtype=dtype)


def ground_truth(truth_model: nn.Module, reference: nn.Module, x: torch.Tensor, dtype_name: str,
                 check_images: int = 0) -> tuple[torch.Tensor, float, int]:
    """What a variant's output on ``x`` is checked against.

    Returns ``(truth, bound, n)``: the float64 reference's stacked outputs on the first ``n``
    images (``check_images``, or the whole batch when 0), and the bound on
    :func:`~shg_fast.tolerances.max_rel_error` for ``dtype_name`` (for bf16, scaled by the error of
    ``reference`` run in that dtype).
    """
    n = x.shape[0] if check_images == 0 else min(x.shape[0], check_images)
    truth = stacked_outputs(truth_model(x[:n].double()))
    reference_error = max_rel_error(stacked_outputs(reference(x[:n])), truth)
    return truth, tolerance(DTYPES[dtype_name][2], reference_error), n


def _steps(config: BenchConfig) -> list[tuple[str, int, str]]:
    return [(d, b, v) for d in config.dtypes for b in config.batches for v in config.variants
            if not (v == "cuda_graph" and b != 1)]


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="run", leave=False)


def run_benchmark(config: BenchConfig, progress: bool = True) -> dict:
    """Time every (dtype, batch, variant) of ``config``; returns the JSON-ready report.

    Report keys: ``schema``, ``environment``, ``config``, ``notes``, ``model`` (stacks, size,
    conv MACs and FLOPs per image), ``paper_ms_per_image``, ``results`` (one dict per timed
    variant: timings from :func:`timing_summary`, ``setup_s``, ``max_rel_error`` vs the float64
    reference, its ``tolerance``, ``agrees``, ``speedup_vs_reference``, ``speedup_vs_paper``) and
    ``errors`` (variants that failed to build or run, with the message).
    """
    config.validate()
    env = environment(config.device)
    device = torch.device(config.device)
    macs = conv_macs(config.stacks, config.size)
    flops = 2 * macs
    torch.manual_seed(0)
    master = randomize_batchnorm(StackedHourglass(num_stacks=config.stacks).eval(), seed=0)
    truth_model = copy.deepcopy(master).to(device=device, dtype=torch.float64)
    results, errors, skipped = [], [], []
    bar = _progress(len(_steps(config)), progress)
    with torch.inference_mode(), bar:
        for dtype_name in config.dtypes:
            with precision(dtype_name) as dtype:
                with torch.inference_mode(False):  # models built here hold normal (trackable) tensors
                    reference = copy.deepcopy(master).to(device=device, dtype=dtype)
                for batch in config.batches:
                    x = example_input(batch, config.size, device, dtype)
                    truth, bound, n_check = ground_truth(truth_model, reference, x, dtype_name, config.check_images)
                    built = {}
                    for variant in config.variants:
                        if variant == "cuda_graph" and batch != 1:
                            continue
                        bar.set_description(f"{variant} batch {batch} {dtype_name}")
                        row = {"variant": variant, "batch": batch, "dtype": dtype_name}
                        reasons = variant_reasons(variant, config.device, dtype)
                        if reasons:
                            skipped.append({**row, "reason": "; ".join(reasons)})
                        else:
                            try:
                                start = time.perf_counter()
                                with torch.inference_mode(False):
                                    fn = build_variant(variant, reference, x)
                                out = stacked_outputs(fn(x))
                                row["setup_s"] = time.perf_counter() - start
                            except Exception as exc:  # a broken variant is reported, the others still run
                                errors.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                            else:
                                err = max_rel_error(out[:, :n_check], truth)
                                row.update(max_rel_error=err, tolerance=bound, agrees=err <= bound,
                                           checked_images=n_check)
                                built[variant] = (fn, row)
                            out = None
                        bar.update()
                    bar.set_description(f"timing batch {batch} {dtype_name}, round robin")
                    times, failed = time_round_robin({v: fn for v, (fn, _) in built.items()}, x, config.warmup,
                                                     config.repeats)
                    for variant, (_, row) in built.items():
                        if variant in failed:
                            errors.append({**row, "error": failed[variant]})
                        else:
                            results.append({**row, **timing_summary(times[variant], batch, flops)})
                    built = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    add_speedups(results)
    if config.device == "cuda":
        env["gpu_after_run"] = gpu_telemetry(torch.cuda.current_device())
    return {
        "schema": SCHEMA_VERSION,
        "environment": env,
        "config": dataclasses.asdict(config),
        "notes": config.notes(),
        "model": {"stacks": config.stacks, "size": config.size, "conv_macs_per_image": macs,
                  "flops_per_image": flops},
        "paper_ms_per_image": PAPER_MS_PER_IMAGE,
        "results": results,
        "errors": errors,
        "skipped": skipped,
    }


#: The variants the fast model is measured against as "the best peer": other runtimes and torch.compile.
RIVALS = ("compile", *PEERS)


def add_speedups(results: list[dict]) -> None:
    """Set each row's ``speedup_vs_reference`` (reference ms/image of its dtype and batch over its
    own; None without a reference row), ``speedup_vs_paper`` (75 ms over its ms/image) and
    ``speedup_vs_best_peer`` (the fastest of :data:`RIVALS` in its dtype and batch over its own;
    None when none of them ran)."""
    reference_ms = {(r["dtype"], r["batch"]): r["ms_per_image"] for r in results if r["variant"] == "reference"}
    best_peer_ms = {}
    for r in results:
        if r["variant"] in RIVALS:
            key = (r["dtype"], r["batch"])
            best_peer_ms[key] = min(best_peer_ms.get(key, math.inf), r["ms_per_image"])
    for r in results:
        base, peer = reference_ms.get((r["dtype"], r["batch"])), best_peer_ms.get((r["dtype"], r["batch"]))
        r["speedup_vs_reference"] = None if base is None else base / r["ms_per_image"]
        r["speedup_vs_paper"] = PAPER_MS_PER_IMAGE / r["ms_per_image"]
        r["speedup_vs_best_peer"] = None if peer is None else peer / r["ms_per_image"]


TABLE_COLUMNS = ("dtype", "batch", "variant", "ms/image", "images/s", "GFLOP/s", "vs reference",
                 "vs paper 75 ms", "max rel err", "tolerance", "agrees", "vs best peer")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _small(value: float | None, spec: str, suffix: str = "") -> str:
    """``spec``, or two significant digits below 0.1 (a slow machine's 0.003x would print as 0.00x)."""
    return _fmt(value, ".2g" if value is not None and 0 < value < 0.1 else spec, suffix)


def format_table(report: dict) -> str:
    """The results as a Markdown table, one row per (dtype, batch, variant), then errors and skipped variants.

    "vs best peer" is the fastest of torch.compile, ONNX Runtime and OpenVINO (same dtype and
    batch) over the row's ms/image: above 1, the row is faster than every peer that ran."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in report["results"]:
        cells = (r["dtype"], str(r["batch"]), r["variant"], _fmt(r["ms_per_image"], ".2f"),
                 _small(r["images_per_s"], ".1f"), _fmt(r["gflop_per_s"], ".0f"),
                 _small(r["speedup_vs_reference"], ".2f", "x"), _small(r["speedup_vs_paper"], ".2f", "x"),
                 f"{r['max_rel_error']:.1e}", f"{r['tolerance']:.1e}", "yes" if r["agrees"] else "NO",
                 _small(r.get("speedup_vs_best_peer"), ".2f", "x"))
        lines.append("| " + " | ".join(cells) + " |")
    for e in report["errors"]:
        lines.append(f"\nerror: {e['variant']} batch {e['batch']} {e['dtype']}: {e['error']}")
    for reason, rows in _grouped_skips(report.get("skipped", [])).items():
        lines.append(f"\nskipped: {', '.join(rows)}: {reason}")
    return "\n".join(lines)


def _grouped_skips(skipped: list[dict]) -> dict[str, list[str]]:
    """Skip reason -> the (variant, dtype) it applies to, each once."""
    grouped: dict[str, list[str]] = {}
    for s in skipped:
        what = f"{s['variant']} {s['dtype']}"
        if what not in grouped.setdefault(s["reason"], []):
            grouped[s["reason"]].append(what)
    return grouped


def _environment_lines(report: dict) -> list[str]:
    env, model = report["environment"], report["model"]
    lines = [
        f"- device: {env['device']} — {env['device_name']}",
        f"- versions: torch {env['torch']}, Triton {env['triton']}, CUDA {env['cuda']}, Python {env['python']}",
        f"- host: {env['host']} ({env['platform']}), {env['cpu_threads']} CPU threads, "
        f"load average {_fmt(env['load_average_1m'], '.1f')} at the start (other work on the machine slows every row)"
        + ("; " + ", ".join(f"{k}={v}" for k, v in env["thread_env"].items()) if env.get("thread_env") else ""),
        f"- date: {env['date']}",
        f"- model: {model['stacks']} stack(s), {model['size']}x{model['size']} input, "
        f"{model['flops_per_image'] / 1e9:.1f} GFLOP/image (convolutions)",
    ]
    for key in ("gpu", "gpu_after_run"):
        if key in env:
            lines.append(f"- {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in env[key].items()))
    cfg = report["config"]
    lines.append(f"- timing: {cfg['warmup']} warm-up and {cfg['repeats']} timed calls per row, median; "
                 + ("CUDA events" if env["device"] == "cuda" else "time.perf_counter"))
    return lines


def format_markdown(report: dict) -> str:
    """A self-contained Markdown page: machine, versions, date, notes and the results table."""
    env = report["environment"]
    parts = [f"# shg_fast bench: {env['device_name']}, {env['date'][:10]}", "", *_environment_lines(report), ""]
    parts += [f"Note: {n}" for n in report["notes"]]
    parts += ["", format_table(report), "",
              f"Paper: {report['paper_ms_per_image']:.0f} ms/image (single prediction, 8 stacks, Titan X, Torch7).", ""]
    return "\n".join(parts)


def plot_report(report: dict, path: str) -> None:
    """Draw ms/image against batch size, one panel per dtype, a line per variant, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    dtypes = list(dict.fromkeys(r["dtype"] for r in report["results"])) or ["fp32"]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 4), squeeze=False)
    for ax, dtype_name in zip(axes[0], dtypes):
        for variant in VARIANTS:
            rows = sorted((r for r in report["results"] if r["dtype"] == dtype_name and r["variant"] == variant),
                          key=lambda r: r["batch"])
            if rows:
                ax.plot([r["batch"] for r in rows], [r["ms_per_image"] for r in rows], marker="o", label=variant)
        ax.axhline(report["paper_ms_per_image"], color="grey", linestyle="--", label="paper (Titan X, 8 stacks)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per image")
        ax.set_title(f"{dtype_name}, {report['model']['stacks']} stack(s), {report['environment']['device_name']}",
                     fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
