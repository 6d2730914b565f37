"""``shg-fast export --onnx``: the file round-trips through ONNX Runtime against the float64 reference.

The ONNX packages are an optional extra (``pip install 'shg_fast[peers]'``): without them the
round-trip tests skip, naming what is missing, and the CLI's refusal is tested instead.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from shg_fast import peers
from shg_fast.cli import main
from shg_fast.checkpoints import SHIPPED_CHECKPOINT, model_from_checkpoint
from shg_fast.reference import StackedHourglass
from shg_fast.tolerances import max_rel_error, randomize_batchnorm, tolerance

needs_export = pytest.mark.skipif(bool(peers.export_reasons()), reason="; ".join(peers.export_reasons()))
needs_onnxruntime = pytest.mark.skipif(bool(peers.onnxruntime_reasons()), reason="; ".join(peers.onnxruntime_reasons()))
needs_openvino = pytest.mark.skipif(bool(peers.openvino_reasons()), reason="; ".join(peers.openvino_reasons()))


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def float64_truth(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(copy.deepcopy(model).double()(x.double()))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped checkpoint exported through the CLI at 64x64: (path, its reference model)."""
    if peers.export_reasons():
        pytest.skip("; ".join(peers.export_reasons()))
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--onnx", str(path), "--size", "64"]) == 0
    model, _ = model_from_checkpoint(SHIPPED_CHECKPOINT, "reference")
    return path, model.float().eval()


@needs_export
def test_file_states_opset_names_and_dynamic_batch(exported):
    import onnx

    path, model = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == peers.ONNX_OPSET
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == peers.INPUT_NAME
    assert dims[0].dim_param == peers.BATCH_DIM and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert [o.name for o in proto.graph.output] == peers.output_names(model.num_stacks)


@needs_onnxruntime
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_runs_the_file_like_the_reference(exported, batch):
    path, model = exported
    x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    out = torch.stack(peers.load_onnxruntime(path)(x))  # batch left dynamic: any batch runs
    assert out.shape == (model.num_stacks, batch, model.num_joints, 16, 16)
    assert max_rel_error(out, float64_truth(model, x)) <= tolerance("float32")


@needs_onnxruntime
def test_export_carries_the_input_mean_and_batchnorm_statistics(tmp_path):
    torch.manual_seed(1)
    model = randomize_batchnorm(StackedHourglass(1, 32, num_joints=5, input_mean=(0.4, 0.5, 0.6)).eval(), seed=1)
    peers.export_onnx(model, tmp_path / "m.onnx", size=128)
    x = torch.rand(2, 3, 128, 128)
    out = torch.stack(peers.load_onnxruntime(tmp_path / "m.onnx")(x))
    assert max_rel_error(out, float64_truth(model, x)) <= tolerance("float32")


@needs_openvino
def test_openvino_runs_the_file_like_the_reference(exported):
    path, model = exported
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = torch.stack(peers.load_openvino(path, tuple(x.shape))(x))
    assert max_rel_error(out, float64_truth(model, x)) <= tolerance("float32")


@needs_onnxruntime
def test_cli_check_compares_the_written_file(capsys, tmp_path):
    code, out, err = run_cli(capsys, ["export", "--onnx", tmp_path / "m.onnx", "--size", "64", "--check"])
    assert code == 0, err
    assert "max relative error" in out and "opset 18" in out
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # the temporary file was renamed into place


@needs_export
def test_a_failed_export_leaves_nothing_behind(capsys, tmp_path, monkeypatch):
    def disk_full(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", disk_full)
    code, _, err = run_cli(capsys, ["export", "--onnx", tmp_path / "m.onnx", "--size", "64"])
    assert code == 1 and "No space left on device" in err.strip().splitlines()[-1]
    assert os.listdir(tmp_path) == []


def test_missing_packages_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "export_reasons", lambda: ["ONNX export needs onnxscript (pip install 'shg_fast[peers]')"])
    code, _, err = run_cli(capsys, ["export", "--onnx", tmp_path / "m.onnx"])
    assert code == 2 and err.count("\n") == 1 and "onnxscript" in err and "shg_fast[peers]" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, words", [
    (["--size", "100"], ["--size", "multiple of 64"]),
    (["--size", "0"], ["--size"]),
    (["--size", "4096"], ["--size"]),
    ([], ["--onnx"]),  # the output is required
])
def test_bad_options_are_one_line(capsys, tmp_path, argv, words):
    full = ["export"] + (["--onnx", tmp_path / "m.onnx"] if argv else []) + argv
    code, _, err = run_cli(capsys, full)
    assert code == 2 and err.count("\n") == 1, err
    for word in words:
        assert word in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["m.txt", "missing/m.onnx", "."])
def test_bad_output_paths_are_one_line(capsys, tmp_path, name):
    code, _, err = run_cli(capsys, ["export", "--onnx", tmp_path / name])
    assert code == 2 and err.count("\n") == 1 and "--onnx" in err, err
    assert os.listdir(tmp_path) == []


def test_export_rejects_a_bad_size_in_the_library():
    if peers.export_reasons():
        pytest.skip("; ".join(peers.export_reasons()))
    with pytest.raises(ValueError, match="multiple of 64"):
        peers.export_onnx(StackedHourglass(1, 16), Path(os.devnull), size=96)
