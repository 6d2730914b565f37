"""scripts/compiled_code_report.py: the roofline part always; one sm_90a compile where the tools exist."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name):
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


report = _load("compiled_code_report")


def test_roofline_counts_the_network_and_never_beats_it():
    rows, totals = report.layer_report()
    assert set(totals) == {f"{m}/batch{b}" for m in report.MODES for b in report.BATCHES}
    # 8 stacks at 256x256: about 54.6 GFLOP per image in the convs (2 FLOP per multiply-add).
    assert totals["bf16/batch1"]["gflop"] == pytest.approx(54.6, abs=0.5)
    assert totals["bf16/batch64"]["gflop"] == pytest.approx(64 * totals["bf16/batch1"]["gflop"], rel=1e-6)
    for row in rows:
        assert row["predicted_us"] >= row["roofline_us"] * (1 - 1e-9) > 0, row
    # bf16 is faster than TF32, which is faster than exact fp32, at batch 64 (compute-bound).
    b64 = {m: totals[f"{m}/batch64"]["predicted_ms"] for m in report.MODES}
    assert b64["bf16"] < b64["tf32"] < b64["fp32"]


def test_tactic_candidates_cover_every_layer_shape_with_a_labelled_default(tmp_path):
    path = tmp_path / "tactics.json"
    report.write_tactics(path)
    data = json.loads(path.read_text())
    keys = [tuple(sorted(e["key"].items())) for e in data["entries"]]
    assert len(keys) == len(set(keys))
    convs = [layer for layer in report.network_layers() if layer["kind"] == "conv"]
    assert {(e["key"]["k"], e["key"]["c_in"], e["key"]["c_out"], e["key"]["size"]) for e in data["entries"]} == \
        {(c["k"], c["c1"], c["c_out"], c["size"]) for c in convs}
    for entry in data["entries"]:
        assert entry["measured"] is False and "not measured" in entry["choice"]["reason"]
        assert entry["choice"]["backend"] in {c["backend"] for c in entry["candidates"]}


def test_committed_report_has_the_required_fields():
    data = json.loads((ROOT / "benchmarks" / "results" / "compiled-code.json").read_text())
    assert "PREDICTIONS" in data["note"]
    assert data["kernels"], "no compiled kernels in the report"
    for kernel in data["kernels"]:
        for field in ("name", "dtype", "registers", "spill_bytes", "shared_bytes", "ctas_per_sm", "tensor_core",
                      "triton"):
            assert field in kernel, (kernel["name"], field)
    assert set(data["predicted_ms"]) == {f"{m}/batch{b}" for m in report.MODES for b in report.BATCHES}


@pytest.mark.skipif(_load("compile_triton_sm90").cuobjdump() is None, reason="no cuobjdump")
def test_one_bf16_variant_compiles_to_hgmma_without_spills():
    """In a subprocess: the tests run Triton in its interpreter, which cannot compile."""
    pytest.importorskip("triton")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import compiled_code_report as r; "
            "print(json.dumps(r.compile_kernels(['bf16'], limit=1)))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code, str(SCRIPTS)], capture_output=True, text=True, env=env,
                            timeout=900)
    if result.returncode and "ptxas" in result.stderr and "not found" in result.stderr:
        pytest.skip("ptxas missing")
    assert result.returncode == 0, result.stderr[-2000:]
    (entry,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert entry["tensor_core"] == "HGMMA" and entry["mma_instructions"] > 0
    assert entry["spill_bytes"] == 0 and entry["spill_instructions"] == 0
    assert 0 < entry["registers"] <= 255 and entry["ctas_per_sm"] >= 1
