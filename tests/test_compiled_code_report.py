"""scripts/compiled_code_report.py: the roofline part always; one sm_90a compile where the tools exist."""

import collections
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

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
    conv_entries = [e for e in data["entries"] if e["key"]["op"] == "conv"]
    assert {(e["key"]["k"], e["key"]["c_in"], e["key"]["c_out"], e["key"]["size"]) for e in conv_entries} == \
        {(c["k"], c["c1"], c["c_out"], c["size"]) for c in convs}
    blocks = [layer for layer in report.network_layers(blocks=True) if layer["kind"] == "block"]
    block_entries = [e for e in data["entries"] if e["key"]["op"] == "residual_block"]
    assert len(block_entries) == len(blocks) * len(report.MODES) * len(report.BATCHES)
    for entry in data["entries"]:
        assert entry["measured"] is False and "not measured" in entry["choice"]["reason"]
        assert entry["choice"]["backend"] in {c["backend"] for c in entry["candidates"]}
    for entry in block_entries:
        predicted = {c["backend"]: c["predicted_us"] for c in entry["candidates"]}
        best = "triton" if entry["key"]["dtype"] == "fp32" else min(predicted, key=lambda b: (predicted[b], b))
        assert entry["choice"]["backend"] == best, entry


def test_block_rows_follow_the_tactic_rule_and_name_each_miss():
    """Every residual block row: both predictions, the default rule's choice (shg_fast.tactics), a miss reason."""

    from shg_fast.tactics import default_residual_block

    rows, _ = report.layer_report()
    block_rows = [r for r in rows if r["kind"] == "block"]
    layers = {layer["name"]: layer for layer in report.network_layers(blocks=True)}
    dtypes = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, False),
              "fp16": (torch.float16, False)}
    assert {r["layer"] for r in block_rows} >= {"r1", "r4+pool", "r5", "hg64", "hg64+up", "hg4", "hg4+pool"}
    for row in block_rows:
        layer = layers[row["layer"]]
        dtype, tf32 = dtypes[row["dtype"]]
        tactic = default_residual_block(layer["c_in"], layer["c_out"], layer["size"], layer["size"], dtype,
                                        row["batch"], tf32=tf32, upsample=layer["upsample"], pool_input=layer["pool"])
        assert tactic.backend == row["backend"], (row["layer"], row["dtype"], row["batch"], tactic.reason)
        assert "PREDICTED" in tactic.reason or row["dtype"] == "fp32"
        chosen = row[row["backend"]]
        assert row["predicted_us"] == chosen["predicted_us"]
        config = row["cuda"]["config"]
        assert config["tile"] in (8, 4, 2) and config["cluster"] in (1, 2, 4, 8)
        # batch 1 fills the SMs: at least 90% of 132 CTAs, except the 4x4 map (one tile per image).
        if row["batch"] == 1 and layer["size"] > 4 and row["dtype"] != "fp32":
            assert config["ctas"] >= 0.9 * 132, row
    goals = report.goals([], [], rows)
    for field in ("predicted_misses", "kernel_misses"):
        for line in goals[field]["layers"]:
            assert "; " in line and ("cuda S" in line or "triton" in line), line


def test_every_miss_is_classified_against_the_latency_floor():
    """Each row states the one-launch latency floor; a miss is 'below the floor' exactly when 2x the roofline is under
    the floor (no per-layer kernel can meet it), else 'kernel inefficiency'; nothing predicted beats its floor."""
    from shg_fast.roofline import BELOW_LATENCY_FLOOR, KERNEL_INEFFICIENCY, LAUNCH_FLOOR_US

    rows, totals = report.layer_report()
    for row in rows:
        assert row["latency_floor_us"] >= max(LAUNCH_FLOOR_US, row["roofline_us"]) > 0
        assert row["predicted_us"] >= row["latency_floor_us"] * (1 - 1e-9), row
        assert row["kernel_us"] >= row["kernel_latency_floor_us"] * (1 - 1e-9) >= row["roofline_us"] * (1 - 1e-9)
        for time, floor, miss in ((row["predicted_us"], row["latency_floor_us"], row["miss"]),
                                  (row["kernel_us"], row["kernel_latency_floor_us"], row["kernel_miss"])):
            if time <= 2 * row["roofline_us"]:
                assert miss is None, row
            else:
                assert miss == (BELOW_LATENCY_FLOOR if floor > 2 * row["roofline_us"] else KERNEL_INEFFICIENCY), row
    # a layer whose roofline is under half the launch floor can only miss below the floor
    small = [r for r in rows if 2 * r["roofline_us"] < LAUNCH_FLOOR_US]
    assert small and all(r["miss"] == BELOW_LATENCY_FLOOR for r in small)
    goals = report.goals([], [], rows)["predicted_misses"]
    assert goals[BELOW_LATENCY_FLOOR] + goals[KERNEL_INEFFICIENCY] == goals["rows"] == len(goals["layers"]) > 0
    for key, total in totals.items():
        assert total["roofline_ms"] <= total["latency_floor_ms"] <= total["predicted_ms"], key


@pytest.mark.parametrize("dtype,mode", [(torch.bfloat16, "bf16"), (torch.float32, "fp32"), (torch.float32, "tf32")],
                         ids=["bf16", "fp32", "tf32"])
def test_layers_are_the_engine_programs_launches(dtype, mode):
    """The report's layers are the engine's GPU program at batch 1 (recorded H200): no max-pool launch, each pooled
    block a '+pool' row, every block on the backend the engine's default rule picks, the same launch count."""
    from shg_fast import StackedHourglass
    from shg_fast.engine import build_program, recorded_gpu

    old = torch.backends.cuda.matmul.allow_tf32  # a property on torch 2.11: no monkeypatch.setattr
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        program = build_program(StackedHourglass().eval().fused_plan().to(dtype), 1, 256, 256, caps=recorded_gpu())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert not [s for s in program.steps if s.op == "max_pool"]
    rows, totals = report.layer_report()
    assert totals[f"{mode}/batch1"]["launches"] == program.launch_count
    blocks = [r for r in rows if r["kind"] == "block" and r["dtype"] == mode and r["batch"] == 1]
    pooled = collections.Counter(s.op for s in program.steps if " pool" in f" {s.shape}")
    # a pooled block: one CUDA step, or two pooled Triton convs (conv1 reads x pooled, conv3 its skip)
    assert pooled["residual_block"] + pooled["conv"] / 2 == sum(r["count"] for r in blocks if r["layer"].endswith("+pool"))
    on_cuda = sum(1 for s in program.steps if s.op == "residual_block" and s.tactic.backend == "cuda")
    assert on_cuda == sum(r["count"] for r in blocks if r["backend"] == "cuda")


def test_committed_report_has_the_required_fields():
    data = json.loads((ROOT / "benchmarks" / "results" / "compiled-code.json").read_text())
    assert "PREDICTIONS" in data["note"]
    assert data["kernels"], "no compiled kernels in the report"
    for kernel in data["kernels"]:
        for field in ("name", "dtype", "registers", "spill_bytes", "shared_bytes", "ctas_per_sm", "tensor_core",
                      "triton"):
            assert field in kernel, (kernel["name"], field)
    assert set(data["predicted_ms"]) == {f"{m}/batch{b}" for m in report.MODES for b in report.BATCHES}
    blocks = [k for k in data["cuda_kernels"] if k["name"].startswith("residual_block_kernel")]
    assert {(k["dtype"], k["path"]) for k in blocks} == {
        ("bf16", "tensor_core"), ("fp16", "tensor_core"), ("tf32", "tensor_core"), ("bf16", "exact"),
        ("fp16", "exact"), ("fp32", "exact"), ("fp64", "exact")}
    for kernel in blocks:
        assert kernel["spill_bytes"] == 0 and kernel["spill_instructions"] == 0, kernel["name"]
        assert set(kernel["per_tile_256x256"]) == {"S8", "S4", "S2"}
        if kernel["path"] == "tensor_core":
            assert kernel["tensor_core"] in ("HMMA", "HGMMA") and kernel["ldmatrix"] > 0 and kernel["cp_async"] > 0
            assert kernel["per_tile_256x256"]["S2"]["ctas_per_sm"] >= 2
            launches = kernel["batch1_launch_256x256"]
            assert all(launches[size]["resident_weights"] for size in ("16x16", "8x8", "4x4")), kernel["name"]
            assert all(launch["ctas_per_sm"] >= 1 for launch in launches.values()), kernel["name"]
    cuda_goals = data["goals"]["cuda"]
    assert cuda_goals["no_spills_in_gemms"] and cuda_goals["tensor_cores_in_every_tensor_core_gemm"]


@pytest.mark.skipif(shutil.which("nvcc") is None or _load("compile_triton_sm90").cuobjdump() is None,
                    reason="nvcc or cuobjdump missing")
def test_cuda_block_kernel_compiles_to_ldmatrix_mma_sync_without_spills():
    (source,) = [p for p in (ROOT / "csrc" / "cuda").glob("residual_block.cu")]
    entries = [k for k in report.cuda_kernels([source]) if k["gemm"]]
    tensor = [k for k in entries if k["path"] == "tensor_core"]
    assert {k["dtype"] for k in tensor} == {"bf16", "fp16", "tf32"}
    for kernel in entries:
        assert kernel["spill_bytes"] == 0 and kernel["spill_instructions"] == 0, kernel
        assert 0 < kernel["registers"] <= 128, kernel  # two 256-thread CTAs per SM by registers
        # ... by declaration (__launch_bounds__(256, 2)), not because ptxas happened to land under 128
        assert kernel["register_cap"] <= 128 and kernel["min_ctas_per_sm"] >= 2, kernel
    for kernel in tensor:
        assert kernel["tensor_core"] == "HMMA" and kernel["mma_instructions"] > 0, kernel
        assert kernel["ldmatrix"] > 0 and kernel["cp_async"] > 0, kernel
        assert kernel["l2_bulk_prefetch"] > 0, kernel  # the weight share prefetched before the dependency wait
    for kernel in entries:  # every variant is a programmatic dependent launch: it waits, then triggers the next
        assert kernel["griddepcontrol_wait"] >= 1 and kernel["griddepcontrol_launch_dependents"] >= 1, kernel


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
