"""Shared set-up of the benchmark suites: device, time budgets, options and the end-of-run summary.

    pytest benchmarks/ --benchmark-only                  # timed; models at the paper's setting
    pytest benchmarks/ --benchmark-only --shg-quick      # models at 1 stack, 64x64: a smoke run
    pytest benchmarks/ --benchmark-only --benchmark-compare   # against the runs in benchmarks/results/
    pytest benchmarks -q --benchmark-disable             # each benchmark once, as a test (`make test`)

The device is the GPU if present, else the CPU. Each benchmark warms up, times one call, and
takes as many rounds as fill its :data:`BUDGETS` entry (within a minimum and a maximum). On the
idle 2-core AMD EPYC development machine the whole ``--benchmark-only`` run took 31 s of wall
time; with other jobs running (load average 10-15) it took 6 to 7 minutes. With ``--benchmark-disable`` the
models run the quick network once (nothing is timed; one float64 pass of the 8-stack model
alone takes a minute there, and every timed run checks the 8-stack outputs): about a minute on
the same busy machine.

At the end a summary lists, per model variant, ms per image, images per second, the speed-up
over the reference and over the paper's 75 ms per image, with device, dtype and batch, and every
reason a benchmark did not run here, each once. ``--benchmark-json`` files carry the same
figures in each benchmark's ``extra_info`` and the machine (CPU model and flags, GPU, driver,
maximum clocks) in ``machine_info``. Runs are stored in, and compared with, ``benchmarks/results``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import pytest
import torch

from shg_fast import benchmarking

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
#: Where ``--benchmark-save`` writes and ``--benchmark-compare`` reads (pytest-benchmark's format).
SUITE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = SUITE_DIR / "results"
_DEFAULT_STORAGE = "file://./.benchmarks"
#: The paper's setting, the default of the model benchmarks on every device.
PAPER_STACKS, PAPER_SIZE = 8, 256
#: ``--shg-quick`` (and ``--benchmark-disable``): a network small enough for a smoke run.
QUICK_STACKS, QUICK_SIZE = 1, 64

_ROWS = pytest.StashKey[list]()
_NOT_RUN = pytest.StashKey[dict]()


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """How long one benchmark is timed: ``warmup`` untimed calls, then enough rounds to fill
    ``seconds`` (judged by the last warm-up call), at least ``min_rounds``, at most ``max_rounds``."""

    warmup: int
    seconds: float
    min_rounds: int
    max_rounds: int

    def rounds(self, call_seconds: float) -> int:
        """The number of timed rounds for a call that takes ``call_seconds``."""
        wanted = math.ceil(self.seconds / max(call_seconds, 1e-9))
        return max(self.min_rounds, min(self.max_rounds, wanted))


#: (device, kind) -> budget. A CPU model benchmark times about 5 s (8 stacks at 256x256: the
#: reference about 9 rounds, the fast model about 17 on an idle 2-core AMD EPYC).
BUDGETS = {
    ("cpu", "model"): TimeBudget(warmup=1, seconds=5.0, min_rounds=3, max_rounds=20),
    ("cpu", "op"): TimeBudget(warmup=1, seconds=0.25, min_rounds=3, max_rounds=50),
    ("cuda", "model"): TimeBudget(warmup=5, seconds=2.0, min_rounds=10, max_rounds=200),
    ("cuda", "op"): TimeBudget(warmup=5, seconds=0.5, min_rounds=10, max_rounds=200),
}


@dataclasses.dataclass(frozen=True)
class ModelSetting:
    """The network and inputs the model benchmarks run."""

    stacks: int
    size: int
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    why_not_paper: str | None  # None at the paper's setting; else why this run differs from it


def model_setting(config: pytest.Config) -> ModelSetting:
    """The paper's setting (8 stacks, 256x256) unless ``--shg-quick`` or ``--benchmark-disable``.

    Batches: 1 on a CPU (the paper's single prediction), 1 and 32 on a GPU, or ``--shg-batch``.
    Dtypes: fp32 on a CPU; fp32, TF32 and bf16 on a GPU.
    """
    dtypes = ("fp32", "tf32", "bf16") if ON_GPU else ("fp32",)
    batches = _int_list(config.getoption("shg_batch")) or ((1, 32) if ON_GPU else (1,))
    if config.getoption("shg_quick"):
        why = "--shg-quick"
    elif config.getoption("benchmark_disable"):
        why = "--benchmark-disable (run once as tests, nothing timed)"
    else:
        return ModelSetting(PAPER_STACKS, PAPER_SIZE, batches, dtypes, None)
    return ModelSetting(QUICK_STACKS, QUICK_SIZE, batches, dtypes, why)


def _int_list(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise pytest.UsageError(f"--shg-batch expects comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise pytest.UsageError(f"--shg-batch values must be positive, got {text!r}")
    return values


def pytest_addoption(parser):
    group = parser.getgroup("shg_fast benchmarks")
    group.addoption("--shg-quick", action="store_true",
                    help=f"model benchmarks at {QUICK_STACKS} stack, {QUICK_SIZE}x{QUICK_SIZE} (a smoke run) "
                         f"instead of the paper's {PAPER_STACKS} stacks at {PAPER_SIZE}x{PAPER_SIZE}")
    group.addoption("--shg-variants", metavar="NAMES",
                    help="model variants to run, comma-separated (default: every variant that runs by default "
                         "on this device; see benchmarks/test_models.py)")
    group.addoption("--shg-batch", metavar="SIZES", help="model batch sizes, comma-separated (default: 1 on a "
                                                         "CPU, 1,32 on a GPU)")


def pytest_configure(config):
    model_setting(config)  # bad options are usage errors before anything runs
    config.stash[_ROWS] = []
    config.stash[_NOT_RUN] = {}
    if config.getoption("benchmark_storage") == _DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{RESULTS_DIR}"
    # torch.compile imports torch.fx.experimental.optimization, which imports torch.utils.mkldnn,
    # whose classes use @torch.jit.script_method: torch 2.13 then warns 14 times at import. The
    # warning is torch's own, about torch's code; the suite cannot avoid it when it runs torch.compile.
    config.addinivalue_line("filterwarnings",
                            "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning:torch.jit._script")


def not_run_here(config: pytest.Config, reason: str, what: str) -> None:
    """Record that benchmark ``what`` does not run on this machine because of ``reason``
    (listed once per reason in the summary)."""
    config.stash[_NOT_RUN].setdefault(reason, []).append(what)


def pytest_collection_modifyitems(config, items):
    """Benchmarks whose ``skipif`` is already true at collection are deselected, their reason recorded."""
    kept, dropped = [], []
    for item in items:
        in_suite = item.path.is_relative_to(SUITE_DIR)
        reasons = [mark.kwargs.get("reason", "skipped") for mark in item.iter_markers("skipif")
                   if in_suite and mark.args and mark.args[0] is True]
        if reasons:
            not_run_here(config, reasons[0], item.nodeid)
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _synchronised(fn, args, kwargs):
    def call():
        out = fn(*args, **kwargs)
        if ON_GPU:
            torch.cuda.synchronize()
        return out

    return call


def _warm_up(call, count: int) -> float:
    """Run ``call`` ``count`` times; seconds taken by the last."""
    elapsed = 0.0
    for _ in range(count):
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
    return elapsed


@pytest.fixture
def timed(benchmark):
    """``timed(fn, *args, images=N, flops_per_image=F, kind="op", **kwargs)``: benchmark ``fn(*args, **kwargs)``.

    Wall-clock per call with a GPU synchronise inside the timed region: the ``BUDGETS[device,
    kind]`` warm-up calls, then as many rounds as fill its seconds. On a GPU also the median of
    CUDA events around each call (``cuda_events_ms_per_call``) and the GPU's clocks, power and
    temperature. Fills ``extra_info`` (ms/image, images/s, GFLOP/s, rounds, device, versions) and
    returns ``fn``'s result. With ``--benchmark-disable`` it runs ``fn`` once, untimed.
    """

    def run(fn, *args, images: int, flops_per_image: float | None = None, kind: str = "op", **kwargs):
        budget = BUDGETS[DEVICE, kind]
        call = _synchronised(fn, args, kwargs)
        rounds = 1 if benchmark.disabled else budget.rounds(_warm_up(call, budget.warmup))
        out = benchmark.pedantic(call, rounds=rounds, warmup_rounds=0, iterations=1)
        info = benchmark.extra_info
        env = _environment()
        info.update(kind=kind, device=DEVICE, images_per_call=images, warmup=budget.warmup,
                    budget_s=budget.seconds, load_average_1m=os.getloadavg()[0],
                    **{key: env.get(key) for key in ("device_name", "torch", "triton", "cuda", "cudnn", "cpu_threads")})
        if benchmark.stats is not None:
            info.update(benchmarking.timing_summary(benchmark.stats.stats.data, images, flops_per_image))
        if ON_GPU and not benchmark.disabled:
            events = benchmarking.time_calls(lambda _: fn(*args, **kwargs), torch.empty(0, device=DEVICE),
                                             warmup=budget.warmup, repeats=rounds)
            info["cuda_events_ms_per_call"] = sorted(events)[len(events) // 2] * 1e3
            info["gpu"] = benchmarking.gpu_telemetry(torch.cuda.current_device())
        return out

    return run


_ENVIRONMENT: dict = {}


def _environment() -> dict:
    """Device name and versions, read once per session."""
    if not _ENVIRONMENT:
        _ENVIRONMENT.update(benchmarking.environment(DEVICE))
    return _ENVIRONMENT


def record_model_result(config: pytest.Config, benchmark, **fields) -> None:
    """Add one model benchmark's fields (variant, batch, dtype, stacks, size, the check against
    float64) to its ``extra_info`` and to the summary."""
    benchmark.extra_info.update(fields, paper_ms_per_image=benchmarking.PAPER_MS_PER_IMAGE)
    if benchmark.stats is not None:
        config.stash[_ROWS].append((benchmark.fullname, benchmark.extra_info))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the machine as :func:`shg_fast.benchmarking.machine_info` describes it; drop the CPU's
    momentary clock, so that ``--benchmark-compare`` on the same machine finds the same machine."""
    for key in ("hz_actual", "hz_actual_friendly"):
        machine_info.get("cpu", {}).pop(key, None)
    machine_info["shg_fast"] = benchmarking.machine_info(DEVICE)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Each model benchmark's ``speedup_vs_reference`` against the reference of the same run."""
    benchmarking.add_speedups([b["extra_info"] for b in output_json["benchmarks"]
                               if b["extra_info"].get("kind") == "model"])


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """The model speeds against the reference and the paper, then why anything did not run here."""
    for report in terminalreporter.stats.get("skipped", []):  # skipped while running: a call a backend cannot run
        if isinstance(report.longrepr, tuple) and (config.rootpath / report.fspath).is_relative_to(SUITE_DIR):
            not_run_here(config, report.longrepr[2].removeprefix("Skipped: "), report.nodeid)
    lines = summary_lines(config)
    if lines:
        terminalreporter.section("shg_fast benchmarks: summary")
        for line in lines:
            terminalreporter.write_line(line)


def summary_lines(config: pytest.Config) -> list[str]:
    """The summary's lines: the model table (when anything was timed) and the reasons for what did not run."""
    named_rows = config.stash.get(_ROWS, [])
    rows = [info for _, info in named_rows]
    lines = []
    if rows:
        benchmarking.add_speedups(rows)
        setting = model_setting(config)
        env = _environment()
        load = env.get("load_average_1m")
        lines += [
            f"model: {setting.stacks} stack(s), {setting.size}x{setting.size} input"
            + (" (the paper's setting)" if setting.why_not_paper is None else
               f" ({setting.why_not_paper}: not the paper's 8 stacks at 256x256, so 'vs paper' is not like for like)"),
            f"device: {DEVICE}, {env.get('device_name')}; {env.get('cpu_threads')} CPU threads; "
            f"torch {env.get('torch')}"
            + ("" if load is None else f"; load average {load:.1f} at the start (other work slows every row)"),
            f"timing: median of {_span(r['runs'] for r in rows)} rounds per row after "
            f"{BUDGETS[DEVICE, 'model'].warmup} warm-up call(s); vs reference = reference ms/image / ms/image "
            f"(same dtype and batch); vs paper = {benchmarking.PAPER_MS_PER_IMAGE:.0f} ms / ms/image "
            "(the paper: single prediction, Titan X, Torch7)",
            "",
            *benchmarking.format_table({"results": rows, "errors": []}).splitlines(),
            *_comparison_lines(config, named_rows),
        ]
    elif config.getoption("benchmark_disable", False):
        lines.append("benchmarks disabled: each ran once as a test, nothing was timed")
    not_run = config.stash.get(_NOT_RUN, {})
    if not_run:
        lines += ["", f"not run here ({sum(map(len, not_run.values()))} benchmarks; each reason once):"]
        for reason, names in not_run.items():
            files = sorted({name.split("::")[0].split("/")[-1] for name in names})
            lines.append(f"  - {reason} [{len(names)}: {', '.join(files)}]")
    return lines


def _comparison_lines(config: pytest.Config, named_rows: list[tuple[str, dict]]) -> list[str]:
    """With ``--benchmark-compare``: each model row's ms/image against the stored run's."""
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's session: what it compared with
    lines = []
    for path, stored in getattr(session, "compared_mapping", {}).items():
        lines += ["", f"against the stored run {path} (now / stored; above 1: slower now):"]
        for fullname, info in named_rows:
            old = stored.get(fullname)
            if old is None:
                lines.append(f"  {info['variant']} batch {info['batch']} {info['dtype']}: not in the stored run")
                continue
            old_ms = old["stats"]["median"] * 1e3 / old["extra_info"]["images_per_call"]
            lines.append(f"  {info['variant']} batch {info['batch']} {info['dtype']}: {info['ms_per_image']:.2f} "
                         f"vs {old_ms:.2f} ms/image = {info['ms_per_image'] / old_ms:.2f}")
    return lines


def _span(values) -> str:
    values = sorted(set(values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
