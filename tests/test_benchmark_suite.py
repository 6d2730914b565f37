"""The pytest-benchmark suite as users run it: options, the end-of-run summary, the JSON, stored runs.

Each test runs pytest on ``benchmarks/`` in a subprocess; the summary's content is checked, not
its timings (the quick network, 1 stack at 64x64).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shg_fast import benchmarking

ROOT = Path(__file__).resolve().parents[1]
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
RESULTS = ROOT / "benchmarks" / "results"


def run_pytest(*args: str) -> subprocess.CompletedProcess:
    """``python -m pytest`` on the benchmark suite, one intra-op thread (a shared CI machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def collected_ids(*args: str) -> list[str]:
    proc = run_pytest("benchmarks/test_models.py", "--collect-only", "-q", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("benchmarks/test_models.py::")]


def test_default_is_the_papers_setting_and_disable_runs_the_quick_network():
    timed = collected_ids("--benchmark-only")
    assert timed and all(f"[{DEVICE}-8x256-" in name for name in timed)
    assert any(name.endswith("-fp32-reference]") for name in timed)
    assert any(name.endswith("-fp32-fast]") for name in timed)
    disabled = collected_ids("--benchmark-disable")
    assert disabled and all(f"[{DEVICE}-1x64-" in name for name in disabled)
    quick = collected_ids("--benchmark-only", "--shg-quick", "--shg-batch=1,3")
    assert {name.split("-b")[1].split("-")[0] for name in quick} == {"1", "3"}


@pytest.mark.parametrize("option, message", [
    ("--shg-variants=reference,nope", "--shg-variants: unknown ['nope']"),
    ("--shg-batch=0", "--shg-batch values must be positive"),
    ("--shg-batch=1,x", "--shg-batch expects comma-separated integers"),
])
def test_bad_options_stop_the_run_with_a_message(option, message):
    proc = run_pytest("benchmarks/test_models.py", "--collect-only", "-q", option)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


@pytest.mark.slow
def test_quick_run_prints_the_summary_and_writes_the_same_figures_to_json(tmp_path):
    out_json = tmp_path / "run.json"
    proc = run_pytest("benchmarks/test_models.py", "--benchmark-only", "--shg-quick", "--shg-batch=1,2",
                      "--shg-variants=reference,fast,cuda_graph", f"--benchmark-json={out_json}")
    output = proc.stdout
    assert proc.returncode == 0, output + proc.stderr
    summary = output.split("shg_fast benchmarks: summary", 1)[1]
    assert "model: 1 stack(s), 64x64 input (--shg-quick: not the paper's 8 stacks at 256x256" in summary
    assert f"device: {DEVICE}, " in summary
    assert "vs paper = 75 ms / ms/image" in summary
    assert "| dtype | batch | variant | ms/image | images/s | GFLOP/s | vs reference | vs paper 75 ms |" in summary
    if not ON_GPU:
        assert "cuda_graph: needs a CUDA GPU" in summary.split("not run here", 1)[1]

    report = json.loads(out_json.read_text())
    machine = report["machine_info"]["shg_fast"]
    assert machine["device"] == DEVICE and machine["cpu"] and machine["cpu_threads"] >= 1
    if sys.platform == "linux":
        assert machine["cpu_flags"] and "hz_actual" not in report["machine_info"]["cpu"]
    rows = {(b["extra_info"]["variant"], b["extra_info"]["batch"], b["extra_info"]["dtype"]): b["extra_info"]
            for b in report["benchmarks"]}
    assert {(v, b) for v, b, _ in rows} >= {("reference", 1), ("fast", 1), ("reference", 2), ("fast", 2)}
    for (variant, batch, dtype), info in rows.items():
        assert (info["device"], info["stacks"], info["size"]) == (DEVICE, 1, 64)
        assert info["images_per_s"] * info["ms_per_image"] == pytest.approx(1000)
        assert info["speedup_vs_paper"] == pytest.approx(75 / info["ms_per_image"])
        reference_ms = rows["reference", batch, dtype]["ms_per_image"]
        assert info["speedup_vs_reference"] == pytest.approx(reference_ms / info["ms_per_image"])
        assert info["agrees"] is True
        # the summary's row carries the same figures as the JSON
        row = benchmarking.format_table({"results": [info], "errors": []}).splitlines()[-1]
        assert f"| {dtype} | {batch} | {variant} | {info['ms_per_image']:.2f} |" in row
        assert row in summary


def test_committed_runs_load_and_match_the_suites_benchmark_names():
    """``--benchmark-compare`` finds the stored CPU run: pytest-benchmark's format, today's test ids."""
    stored = sorted(RESULTS.glob("*/[0-9][0-9][0-9][0-9]_*.json"))
    assert stored, f"no pytest-benchmark run stored under {RESULTS}"
    cpu_run = json.loads(stored[0].read_text())
    names = {b["fullname"] for b in cpu_run["benchmarks"]}
    for variant in ("reference", "fast"):
        assert f"benchmarks/test_models.py::test_model[cpu-8x256-b1-fp32-{variant}]" in names
    assert cpu_run["machine_info"]["shg_fast"]["device"] == "cpu"
    if not ON_GPU:
        assert {f"benchmarks/test_models.py::test_model[cpu-8x256-b1-fp32-{v}]" for v in ("reference", "fast")} \
            <= set(collected_ids("--benchmark-only"))
