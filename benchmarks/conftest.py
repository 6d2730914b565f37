"""Benchmarks run as tests too (`pytest benchmarks --benchmark-disable`), so they never rot.

`pytest benchmarks/ --benchmark-only` times them. Shared here: the device (the GPU if present,
else the CPU, where the suite runs at smaller sizes), and the ``timed`` fixture that times a
call synchronised with the GPU and fills ``extra_info`` (ms/image, images/s, GFLOP/s, CUDA-event
median on a GPU, device, versions, GPU telemetry).
"""

import functools

import pytest
import torch

from shg_fast import benchmarking

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
#: Rounds and warm-up rounds per benchmark (pedantic mode).
ROUNDS, WARMUP_ROUNDS = (50, 5) if ON_GPU else (3, 1)


@functools.lru_cache(maxsize=None)
def machine_info() -> dict:
    """Device name and versions (read once per session)."""
    env = benchmarking.environment(DEVICE)
    return {key: env.get(key) for key in ("device_name", "torch", "triton", "cuda", "cudnn", "cpu_threads")}


def _synchronised(fn, args, kwargs):
    def call():
        out = fn(*args, **kwargs)
        if ON_GPU:
            torch.cuda.synchronize()
        return out

    return call


@pytest.fixture
def timed(benchmark):
    """``timed(fn, *args, images=N, flops_per_image=F, **kwargs)``: benchmark ``fn(*args, **kwargs)``.

    Wall-clock per call with a GPU synchronise inside the timed region, ``ROUNDS`` rounds after
    ``WARMUP_ROUNDS``; on a GPU also the median of CUDA events around each call
    (``cuda_events_ms_per_call``). Returns ``fn``'s result. With ``--benchmark-disable`` it runs
    ``fn`` once and records only the machine information.
    """

    def run(fn, *args, images: int, flops_per_image: float | None = None, **kwargs):
        out = benchmark.pedantic(_synchronised(fn, args, kwargs), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS,
                                 iterations=1)
        info = benchmark.extra_info
        info.update(machine_info(), images_per_call=images)
        if benchmark.stats is not None:
            info.update(benchmarking.timing_summary(benchmark.stats.stats.data, images, flops_per_image))
        if ON_GPU and not benchmark.disabled:
            events = benchmarking.time_calls(lambda _: fn(*args, **kwargs), torch.empty(0, device=DEVICE),
                                             warmup=WARMUP_ROUNDS, repeats=ROUNDS)
            info["cuda_events_ms_per_call"] = sorted(events)[len(events) // 2] * 1e3
            info.update(benchmarking.gpu_telemetry(torch.cuda.current_device()))
        return out

    return run
