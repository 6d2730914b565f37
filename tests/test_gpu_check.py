"""scripts/gpu_check.sh: its schedule fits the one device call, and its CPU rehearsal: every part
that can run runs (tiny smoke cases), the GPU-only parts are recorded as skipped with their reason,
and it exits 0 with its reports written (and copied, as the device call copies them into $OUT)."""

import importlib
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest
import torch

from shg_fast import StackedHourglass, _extension, roofline
from shg_fast.engine import build_program, recorded_gpu
from shg_fast.tolerances import TOLERANCES

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PARTS = ["build", "env", "tests", "tune", "model", "peers", "kernels", "ops", "sanitize"]


def test_plan_fits_the_call_in_the_order_of_value():
    result = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=60, check=True)
    plan = [line.split() for line in result.stdout.splitlines()]
    assert [name for name, _ in plan] == PARTS
    assert sum(int(seconds) for _, seconds in plan) <= 480
    header = SCRIPT.read_text()
    assert "timeout_s=540" in header and 'bash scripts/gpu_check.sh --copy-to "$OUT" /tmp/gpu_check' in header
    assert "--resume" in header and "timeout_s=200" in header  # the follow-up call


def test_predictions_take_the_rates_of_the_named_device():
    try:
        assert roofline.use_device("NVIDIA H100 80GB HBM3") == "H100 SXM"
        h100 = roofline.block_prediction(256, 256, 4, 1, "bf16", False)["roofline_us"]
        assert roofline.RATES["device"] == "H100 SXM" and roofline.COPY_TBPS == 3.0
        assert roofline.use_device("NVIDIA H200") == "H200"
        h200 = roofline.block_prediction(256, 256, 4, 1, "bf16", False)["roofline_us"]
        assert h100 > h200  # a memory-bound block (its weights, 4x4 maps): slower memory, longer roofline
        assert roofline.device_profile("NVIDIA H100 PCIe")[0] == roofline.DEFAULT_DEVICE
        assert "default" in roofline.device_profile("NVIDIA H100 PCIe")[1]
    finally:
        roofline.use_device(None)
    assert roofline.RATES["device"] == "H200" and roofline.COPY_TBPS == 4.3


def test_every_block_and_conv_step_of_a_gpu_program_has_a_prediction():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        gpu_check = importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    plan = StackedHourglass(num_stacks=1).eval().fused_plan().to(torch.bfloat16)
    program = build_program(plan, 1, 256, 256, caps=recorded_gpu())
    for step in program.steps:
        predicted = gpu_check._step_prediction(step, 1, "bf16")
        assert (predicted.get("predicted_us", 0) > 0) == (step.op in ("residual_block", "conv")), step


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check is the full run: bash scripts/gpu_check.sh")
@pytest.mark.skipif(_extension.load_error() is not None, reason="the check would build the extension first")
@pytest.mark.slow
def test_gpu_check_rehearsal_on_a_cpu_machine(tmp_path):
    out, copy = tmp_path / "out", tmp_path / "copy"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(SCRIPT), "--copy-to", str(copy), str(out)], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    parts = {p["part"]: (p["status"], p["note"]) for p in summary["parts"]}
    assert list(parts) == PARTS
    assert {name: status for name, (status, _) in parts.items()} == {
        "build": "skipped", "env": "ok", "tests": "skipped", "tune": "skipped", "model": "ok", "peers": "ok",
        "kernels": "skipped", "ops": "ok", "sanitize": "skipped"}
    assert all(note for status, note in parts.values() if status == "skipped")  # each says why
    assert parts["tune"][1] == "no measured-tactics tuner yet (issue 28)"
    assert sorted(p.name for p in copy.iterdir()) == ["logs.tar.gz", "summary.json", "summary.md"]
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["environment"]["roofline_profile"]["device"] == "H200"  # no GPU: the default, said so

    ops = summary["ops"]
    assert {r["op"] for r in ops} == {"residual_block", "residual_block_pool_input", "upsample_add", "conv1x1_bn_relu",
                                      "conv3x3_relu", "decode_heatmaps"}
    measured = [r for r in ops if r["status"] == "ok"]
    assert all(r["smoke"] and r["ms_per_batch_median"] > 0 for r in measured)
    block = next(r for r in measured if r["op"] == "residual_block" and r["backend"] == "cpu")
    assert block["max_rel_error_vs_fp64"] < 1e-4
    pooled = next(r for r in measured if r["op"] == "residual_block_pool_input" and r["backend"] == "cpu")
    assert pooled["max_rel_error_vs_fp64"] < TOLERANCES["float32"]
    aten_block = next(r for r in measured if r["op"] == "residual_block" and r["backend"] == "aten")
    assert aten_block["pred_roofline_ms"] > 0 and "pred_roofline_ms" not in block
    assert not [r for r in ops if r["status"] == "error"]

    assert {(r["variant"], r["status"]) for r in summary["model"]} == {("fast", "ok"), ("cuda_graph", "ok")}
    assert all(r["agrees"] for r in summary["model"])
    assert {(r["variant"], r["status"]) for r in summary["peers"]} == {
        ("reference_channels_last", "ok"), ("reference_cuda_graph", "skipped"), ("compile_max_autotune", "skipped")}
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert {"logs/env.log", "logs/ops.log", "logs/model.log", "logs/peers.log", "parts.tsv",
                "model.jsonl"} <= set(logs.getnames())
    markdown = (out / "summary.md").read_text()
    assert "CPU smoke run" in markdown and "| residual_block |" in markdown and "| vs best peer |" in markdown

    # The follow-up call: every part is done (ok or skipped), so it runs none and keeps the report.
    lines = (out / "parts.tsv").read_text()
    result = subprocess.run(["bash", str(SCRIPT), "--resume", str(out)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "parts.tsv").read_text() == lines
