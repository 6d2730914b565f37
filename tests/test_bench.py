"""shg-fast bench and shg_fast.benchmarking: options, FLOP count, timing maths, report, table, plot.

The failure-path tests inject a wrong or crashing model as the fast one
(``shg_fast.variants.FastStackedHourglass``); the others run the real fast model.
"""

import json
import sys

import pytest
import torch

from shg_fast import benchmarking, variants
from shg_fast.cli import main
from shg_fast.reference import StackedHourglass
from shg_fast.tolerances import LOW_PRECISION_FACTOR, TOLERANCES, tolerance

TINY = ["--size", "64", "--stacks", "1", "--batch", "1,2", "--warmup", "0", "--repeats", "1"]


def run_cli(*argv):
    return main(["bench", *argv])


def test_conv_macs_match_the_paper_count():
    macs = benchmarking.conv_macs(stacks=8, size=256)
    assert macs == 27_440_185_344
    assert round(2 * macs / 1e9, 1) == 54.9


def test_conv_macs_scale_with_area_and_stacks():
    full = benchmarking.conv_macs(stacks=2, size=256)
    assert benchmarking.conv_macs(stacks=2, size=128) * 4 == full
    per_stack = benchmarking.conv_macs(stacks=3, size=256) - full
    assert benchmarking.conv_macs(stacks=8, size=256) - full == 6 * per_stack > 0


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch values must be positive"),
    (["--batch", "1,x"], "--batch expects comma-separated integers"),
    (["--dtype", "fp16"], "unknown dtype ['fp16']"),
    (["--dtype", "tf32", "--device", "cpu"], "tf32 needs a CUDA device"),
    (["--variants", "reference,slow"], "unknown variant ['slow']"),
    (["--size", "100"], "size must be a positive multiple of 64"),
    (["--stacks", "0"], "argument --stacks: expected an integer from 1 to 64"),
    (["--repeats", "0"], "argument --repeats: expected an integer from 1 to"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--json", "/nonexistent-dir/r.json"], "(/nonexistent-dir) does not exist"),
])
def test_bad_options_give_one_line_errors(argv, message, capsys):
    device = [] if "--device" in argv else ["--device", "cpu"]
    assert run_cli(*device, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("shg-fast bench: error:") and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_an_error(capsys):
    assert run_cli("--device", "cuda") == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_defaults_per_device():
    cpu, gpu = benchmarking.default_config("cpu"), benchmarking.default_config("cuda")
    assert (cpu.stacks, cpu.batches, cpu.dtypes) == (8, (1, 4), ("fp32",))
    assert cpu.variants == ("reference", "fast", "onnxruntime", "openvino")  # the peers: skipped, saying why, if absent
    assert (gpu.stacks, gpu.batches, gpu.dtypes) == (8, (1, 8, 32, 64), ("fp32", "tf32", "bf16"))
    assert gpu.variants == ("reference", "fast", "compile", "cuda_graph")
    assert any("not timed: compile" in n for n in cpu.notes()) and gpu.notes() == []
    quick = benchmarking.default_config("cpu", quick=True)
    assert any("not like for like" in n for n in quick.notes())
    assert quick.size < cpu.size and quick.batches == (1,)
    assert "compile" not in benchmarking.default_config("cuda", quick=True).variants


def test_timing_summary_maths():
    summary = benchmarking.timing_summary([0.3, 0.1, 0.2], batch=4, flops_per_image=1e9)
    assert summary["runs"] == 3
    assert summary["ms_per_batch_median"] == pytest.approx(200.0)
    assert summary["ms_per_batch_min"] == pytest.approx(100.0)
    assert summary["ms_per_image"] == pytest.approx(50.0)
    assert summary["images_per_s"] == pytest.approx(20.0)
    assert summary["gflop_per_s"] == pytest.approx(20.0)


def test_time_calls_counts_warmup_and_repeats():
    calls = []
    times = benchmarking.time_calls(lambda x: calls.append(x), torch.ones(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_precision_sets_and_restores_tf32():
    before = torch.backends.cudnn.allow_tf32
    with benchmarking.precision("tf32") as dtype:
        assert torch.backends.cudnn.allow_tf32 and dtype == torch.float32
    with benchmarking.precision("bf16") as dtype:
        assert not torch.backends.cudnn.allow_tf32 and dtype == torch.bfloat16
    assert torch.backends.cudnn.allow_tf32 == before


def test_tolerance_table_lookup():
    assert tolerance("float32") == TOLERANCES["float32"]
    assert tolerance("bfloat16", 1.0) == LOW_PRECISION_FACTOR
    assert tolerance("bfloat16", 0.0) == TOLERANCES["bfloat16"]


def test_gpu_telemetry_without_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert "nvidia-ml-py not installed" in benchmarking.gpu_telemetry()["nvml"]


def test_compile_mode_per_device():
    assert variants.compile_mode(torch.device("cuda")) == "max-autotune"
    assert variants.compile_mode(torch.device("cpu")) is None


def fake_report(agrees=True, errors=()):
    row = dict(variant="fast", batch=8, dtype="bf16", ms_per_image=2.5, images_per_s=400.0, gflop_per_s=21960.0,
               speedup_vs_reference=3.0, speedup_vs_paper=30.0, max_rel_error=1.5e-3, tolerance=1.6e-2,
               agrees=agrees)
    ref = dict(row, variant="compile", speedup_vs_reference=None)
    return {"results": [row, ref], "errors": list(errors)}


def test_table_formatting():
    lines = benchmarking.format_table(fake_report()).splitlines()
    assert lines[0].split(" | ")[:3] == ["| dtype", "batch", "variant"]
    assert lines[1] == "|" + "---|" * len(benchmarking.TABLE_COLUMNS)
    assert lines[2] == ("| bf16 | 8 | fast | 2.50 | 400.0 | 21960 | 3.00x | 30.00x | 1.5e-03 | 1.6e-02 | yes | n/a |")
    assert "| n/a |" in lines[3]
    bad = benchmarking.format_table(fake_report(agrees=False, errors=[
        dict(variant="cuda_graph", batch=1, dtype="fp32", error="RuntimeError: boom")]))
    assert "| NO |" in bad and "error: cuda_graph batch 1 fp32: RuntimeError: boom" in bad


def test_quick_cpu_run_writes_json_markdown_and_plot(tmp_path, capsys):
    paths = {ext: tmp_path / f"run.{ext}" for ext in ("json", "md", "png")}
    status = run_cli("--device", "cpu", "--quick", *TINY, "--variants", "reference,fast,cuda_graph",
                     "--json", str(paths["json"]), "--markdown", str(paths["md"]), "--plot", str(paths["png"]))
    out = capsys.readouterr().out
    assert status == 0, out
    report = json.loads(paths["json"].read_text())
    assert report["schema"] == benchmarking.SCHEMA_VERSION
    assert set(report) == {"schema", "environment", "config", "notes", "model", "paper_ms_per_image",
                           "results", "errors", "skipped"}
    assert {"date", "torch", "triton", "cuda", "device", "device_name"} <= set(report["environment"])
    assert report["model"] == {"stacks": 1, "size": 64, "conv_macs_per_image": benchmarking.conv_macs(1, 64),
                               "flops_per_image": 2 * benchmarking.conv_macs(1, 64)}
    rows = {(r["variant"], r["batch"]) for r in report["results"]}
    assert rows == {("reference", 1), ("reference", 2), ("fast", 1), ("fast", 2), ("cuda_graph", 1)}
    for r in report["results"]:
        assert r["agrees"] and r["max_rel_error"] <= r["tolerance"] == TOLERANCES["float32"]
        assert r["ms_per_image"] > 0 and r["images_per_s"] == pytest.approx(1000 / r["ms_per_image"])
        assert r["speedup_vs_paper"] == pytest.approx(75.0 / r["ms_per_image"])
    assert report["errors"] == []
    assert "| fp32 | 2 | fast |" in out and "not like for like" in out
    assert "| fp32 | 1 | cuda_graph |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class WrongModel(StackedHourglass):
    def forward(self, x):
        return [h + 0.01 * h.abs().max() for h in super().forward(x)]


class BrokenModel(StackedHourglass):
    def forward(self, x):
        raise RuntimeError("kernel exploded")


@pytest.mark.parametrize("model, message", [(WrongModel, "1 disagree"), (BrokenModel, "1 variant(s) failed")])
def test_wrong_or_failing_fast_model_fails_the_run(model, message, monkeypatch, capsys):
    monkeypatch.setattr(variants, "FastStackedHourglass", model)
    assert run_cli("--device", "cpu", *TINY, "--batch", "1", "--variants", "reference,fast") == 1
    captured = capsys.readouterr()
    assert message in captured.err
    if model is BrokenModel:
        assert "error: fast batch 1 fp32: RuntimeError: kernel exploded" in captured.out
    else:
        assert "| fp32 | 1 | fast |" in captured.out and "| NO |" in captured.out


def test_quick_bench_with_the_real_fast_model(capsys):
    status = run_cli("--device", "cpu", "--quick", *TINY, "--batch", "1", "--variants", "reference,fast,cuda_graph")
    out = capsys.readouterr().out
    assert status == 0, out
    assert "| fp32 | 1 | fast |" in out and "| fp32 | 1 | cuda_graph |" in out


def test_round_robin_alternates_and_drops_a_failing_variant():
    calls = []

    def broken(x):
        calls.append("broken")
        raise RuntimeError("boom")

    fns = {"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b"), "broken": broken}
    times, failed = benchmarking.time_round_robin(fns, torch.ones(1), warmup=1, repeats=3)
    assert calls == ["a", "a", "b", "b", "broken", "a", "b", "a", "b"]  # warm-up inside each first turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert failed == {"broken": "RuntimeError: boom"}


def test_speedup_vs_best_peer():
    rows = [dict(variant=v, batch=1, dtype="fp32", ms_per_image=ms)
            for v, ms in (("reference", 400.0), ("fast", 100.0), ("onnxruntime", 150.0), ("openvino", 120.0))]
    benchmarking.add_speedups(rows)
    by_name = {r["variant"]: r for r in rows}
    assert by_name["fast"]["speedup_vs_best_peer"] == pytest.approx(1.2)
    assert by_name["openvino"]["speedup_vs_best_peer"] == pytest.approx(1.0)
    assert by_name["fast"]["speedup_vs_reference"] == pytest.approx(4.0)


def test_a_peer_that_cannot_run_is_skipped_saying_why(monkeypatch, capsys, tmp_path):
    from shg_fast import peers

    monkeypatch.setattr(peers, "onnxruntime_reasons", lambda: ["needs onnxruntime (pip install 'shg_fast[peers]')"])
    path = tmp_path / "r.json"
    assert run_cli("--device", "cpu", *TINY, "--batch", "1,2", "--variants", "reference,onnxruntime",
                   "--json", str(path)) == 0
    out = capsys.readouterr().out
    assert "skipped: onnxruntime fp32: onnxruntime: needs onnxruntime (pip install 'shg_fast[peers]')" in out
    report = json.loads(path.read_text())
    assert [(s["variant"], s["batch"]) for s in report["skipped"]] == [("onnxruntime", 1), ("onnxruntime", 2)]
    assert {r["variant"] for r in report["results"]} == {"reference"}


def test_peer_reasons_per_device_and_dtype():
    assert variants.variant_reasons("fast", "cpu", torch.bfloat16) == []
    assert "CPU only" in variants.variant_reasons("onnxruntime", "cuda", torch.float32)[0]
    assert any("float32" in r for r in variants.variant_reasons("onnxruntime", "cpu", torch.bfloat16))
    with pytest.raises(RuntimeError, match="CPU only"):
        variants.build_variant("openvino", StackedHourglass(1, 16), torch.rand(1, 3, 64, 64, device="meta"))


@pytest.mark.skipif(bool(variants.variant_reasons("onnxruntime", "cpu", torch.float32)
                         + variants.variant_reasons("openvino", "cpu", torch.float32)),
                    reason="needs the peers (pip install 'shg_fast[peers]')")
def test_peers_run_side_by_side_and_agree_with_float64(capsys):
    assert run_cli("--device", "cpu", *TINY, "--batch", "1,2", "--variants", "reference,fast,onnxruntime,openvino") == 0
    out = capsys.readouterr().out
    for batch in (1, 2):
        for variant in ("onnxruntime", "openvino"):
            row = next(line for line in out.splitlines() if line.startswith(f"| fp32 | {batch} | {variant} |"))
            assert row.split(" | ")[-2] == "yes"  # agrees with the float64 reference
