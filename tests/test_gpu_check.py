"""scripts/gpu_check.sh on a machine without a GPU: every part that can run runs (tiny smoke
cases), the GPU-only parts are reported as skipped, and it exits 0 with its reports written."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest
import torch

from shg_fast import _extension
from shg_fast.testing import TOLERANCES

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check is the full run: bash scripts/gpu_check.sh"),
    pytest.mark.skipif(_extension.load_error() is not None, reason="the check would build the extension first"),
    pytest.mark.slow,
]


def test_gpu_check_on_a_cpu_machine(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "parts.tsv").read_text().splitlines()}
    assert parts == {"build": "skipped", "env": "ok", "tests-auto": "skipped", "tests-cuda": "skipped",
                     "tests-triton": "skipped", "tests-reference": "skipped", "sanitize": "skipped", "ops": "ok",
                     "model": "ok", "compile": "skipped"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["torch"] == torch.__version__
    ops = summary["ops"]
    assert {r["op"] for r in ops} == {"residual_block", "residual_block_pool_input", "upsample_add", "conv1x1_bn_relu",
                                      "conv3x3_relu", "decode_heatmaps"}
    measured = [r for r in ops if r["status"] == "ok"]
    assert all(r["smoke"] and r["ms_per_batch_median"] > 0 for r in measured)
    # The C++ residual block ran and agrees with its float64 twin; conv_bn_relu has no cpu backend.
    block = next(r for r in measured if r["op"] == "residual_block" and r["backend"] == "cpu")
    assert block["max_rel_error_vs_fp64"] < 1e-4
    pooled = next(r for r in measured if r["op"] == "residual_block_pool_input" and r["backend"] == "cpu")
    assert pooled["max_rel_error_vs_fp64"] < TOLERANCES["float32"]
    # Residual blocks carry the H200 PREDICTION next to the measurement (roofline on the aten row).
    aten_block = next(r for r in measured if r["op"] == "residual_block" and r["backend"] == "aten")
    assert aten_block["h200_roofline_ms"] > 0 and "h200_roofline_ms" not in block
    assert "| predicted | roofline |" in (out / "summary.md").read_text()
    assert any(r["op"] == "conv3x3_relu" and r["backend"] == "cpu" and r["status"] == "skipped" for r in ops)
    assert not [r for r in ops if r["status"] == "error"]
    model = {(r["variant"], r["status"]) for r in summary["model"]}
    assert model == {("reference", "ok"), ("fast", "ok")}
    assert all(r["agrees"] for r in summary["model"])
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert {"logs/env.log", "logs/ops.log", "logs/model.log"} <= set(logs.getnames())
    markdown = (out / "summary.md").read_text()
    assert "CPU smoke run" in markdown and "| residual_block |" in markdown
