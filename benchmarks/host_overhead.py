"""Host-side cost of a forward pass, measured without a GPU: launches per forward and microseconds of Python.

Run: ``.venv/bin/python benchmarks/host_overhead.py [--before PATH] [--out FILE]``. Writes
``benchmarks/results/host-overhead.json``.

* ``launches_cuda_block`` / ``launches_triton``: kernel launches per 8-stack 256x256 forward of
  the GPU program (:func:`shg_fast.engine.recorded_gpu`: the program built for a CUDA device,
  every launch recorded instead of run), with the whole-block CUDA kernel and Triton only.
* ``host_us_forward`` (``_triton``): median host time of one eager run of that program, kernels
  stubbed (tensors on ``meta``): the engine's own per-forward Python, not a GPU timing. The real
  launch calls (Triton's launcher, the CUDA op's dispatch) are not in it.
* ``host_us_graph_replay`` (``_decode_flip``): median host time of one ``cuda_graph`` replay
  call (input check, the O(1) staleness check, input copy, replay, one output clone), with the
  graph's ``replay()`` stubbed and tensors on ``meta``.
* ``host_us_state_check`` / ``host_us_state_check_before``: the per-call check that the plan is
  current on the full model: the O(1) generation check now, the pass over every tensor
  (``state_key``) and module (training flags) that every call made before.
* ``host_us_forward_cpu``: median wall time of ``model(x)`` on the float32 CPU path for a tiny
  network (8 stacks, 16 features, 64x64 input, batch 1, one thread), where the kernels are small,
  so mostly host overhead (dispatch, staleness check, Python); ``host_us_forward_cpu_before``
  is the same measured on a checkout of the code before the engine (``--before PATH``: a
  checkout with its extension built), in a subprocess, interleaved with the current code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 300

CPU_SNIPPET = """
import statistics, time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
from shg_fast import StackedHourglass
model = StackedHourglass(8, 16, 16).eval()
x = torch.rand(1, 3, 64, 64)
times = []
with torch.no_grad():
    for _ in range(20):
        model(x)
    for _ in range({samples}):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
print(statistics.median(times) * 1e6)
"""


def median_us(fn, samples: int = SAMPLES, warmup: int = 20) -> float:
    """Median over ``samples`` timed calls of ``fn`` (each timed alone: preemption hits few samples)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


class _StubGraph:
    """Stands in for torch.cuda.CUDAGraph: replay() records instead of launching."""

    def __init__(self):
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1


def gpu_figures(plan) -> dict:
    from shg_fast.engine import build_program, recorded_gpu

    figures = {}
    x = torch.empty(1, 3, 256, 256, dtype=plan.dtype, device="meta")
    with torch.no_grad():
        for name, caps in (("cuda_block", recorded_gpu()), ("triton", recorded_gpu(cuda_kernels=False))):
            program = build_program(plan, 1, 256, 256, caps=caps)
            figures[f"launches_{name}"] = program.launch_count
            suffix = "" if name == "cuda_block" else "_triton"
            figures[f"host_us_forward{suffix}"] = median_us(lambda: program(x))
            figures[f"steps_{name}"] = len(program.steps)
    return figures


def replay_figures(model) -> dict:
    """The cuda_graph replay path with the graph stubbed: the captured program is the recorded GPU one."""
    from shg_fast.cuda_graph import _GraphRunner, _input_check
    from shg_fast.engine import build_program, recorded_gpu
    from shg_fast.ops import MPII_FLIP_PAIRS

    class RecordedRunner(_GraphRunner):
        def capture(self):
            self.captured(_StubGraph(), self.forward(self.static_input))

    figures = {}
    x = torch.empty(1, 3, 256, 256, device="meta")
    plan = model.fused_plan()
    for suffix, kwargs in (("", {}), ("_decode_flip", dict(decode=True, flip_pairs=MPII_FLIP_PAIRS))):
        program = build_program(plan, 1, 256, 256, caps=recorded_gpu(), **kwargs)
        with torch.no_grad():
            runner = RecordedRunner(model, x, program, 0, True, True, _input_check(model, x))
            figures[f"host_us_graph_replay{suffix}"] = median_us(lambda: runner(x), samples=3000)
        assert runner.graph.replays > 0
    return figures


def state_check_figures(model) -> dict:
    from shg_fast.model import _modules_of, state_key

    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))  # the plan is built and the state read once
    return {"host_us_state_check": median_us(model._refresh),
            "host_us_state_check_before": median_us(lambda: (state_key(model),
                                                              any(m.training for m in _modules_of(model))),
                                                    samples=100)}


def cpu_figure(python_path: Path | None, samples: int) -> float:
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    out = subprocess.run([sys.executable, "-c", CPU_SNIPPET.format(samples=samples)], capture_output=True,
                         text=True, env=env, cwd=str(python_path or ROOT), timeout=1800, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/host-overhead.json")
    parser.add_argument("--before", type=Path, help="a checkout of the code before the engine, extension built")
    parser.add_argument("--before-label", default="", help="what --before is (e.g. its commit)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the CPU measurement")
    args = parser.parse_args(argv)

    from shg_fast import StackedHourglass

    torch.manual_seed(0)
    model = StackedHourglass().eval()
    figures = gpu_figures(model.fused_plan().to(torch.float16))
    figures.update(replay_figures(model))
    figures.update(state_check_figures(model))
    now, before = [], []
    for _ in range(args.rounds):
        now.append(cpu_figure(None, SAMPLES))
        if args.before is not None:
            before.append(cpu_figure(args.before, SAMPLES))
    figures["host_us_forward_cpu"] = statistics.median(now)
    if before:
        figures["host_us_forward_cpu_before"] = statistics.median(before)
    result = {
        "what": "host-side measurements on a CPU machine with kernels stubbed (recorded), not GPU timings; "
                "see benchmarks/host_overhead.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                   f"(load average {os.getloadavg()[0]:.1f} at the end)",
        "torch": torch.__version__,
        "network": "8 stacks, 256 features, 16 joints, 256x256, batch 1 (GPU program: float16)",
        "cpu_network": "8 stacks, 16 features, 16 joints, 64x64, batch 1, float32, 1 thread",
        "before": None if args.before is None else args.before_label or str(args.before),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
