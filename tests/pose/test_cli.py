"""The eval / train / predict subcommands end to end, and their one-line errors."""

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from shg_fast.cli import main
from shg_fast.data.synthetic import SyntheticPoses
from shg_fast.checkpoints import SHIPPED_CHECKPOINT, model_from_checkpoint
from shg_fast.train import evaluate_pckh
from tests.pose.test_pckh import ANNOT, DOCUMENTED, PREDS

#: The shipped model must keep at least this PCKh@0.5 (all joints) on held-out synthetic poses.
SHIPPED_MIN_PCKH = 65.0  # measured: 76.8 on these 48 poses, 76.7 on 512 others (assets/README.md)

PHOTO = Path(__file__).resolve().parents[1] / "data" / "mpii" / "images" / "043789989.jpg"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_eval_table_and_json(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", "--preds", PREDS, "--annot", ANNOT)
    assert code == 0 and "total (14 joints, weighted)    83.94" in out
    code, out, _ = run_cli(capsys, "eval", "--preds", PREDS, "--annot", ANNOT, "--json", "--curve", tmp_path / "c.png")
    result = json.loads(out)
    assert code == 0 and (tmp_path / "c.png").stat().st_size > 0
    for key in ("total_weighted", "total_unweighted", "total_all16"):
        assert round(result[key], 2) == DOCUMENTED[key]
    assert {k: round(v, 2) for k, v in result["per_joint"].items()} == DOCUMENTED["per_joint"]


def test_eval_errors(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "eval", "--preds", tmp_path / "none.h5", "--annot", ANNOT)[::2],
                          "does not exist")
    with h5py.File(tmp_path / "short.h5", "w") as f:
        f["preds"] = np.zeros((10, 16, 2))
    assert_one_line_error(*run_cli(capsys, "eval", "--preds", tmp_path / "short.h5", "--annot", ANNOT)[::2],
                          "'preds' must have shape (2958, 16, 2)")
    with h5py.File(tmp_path / "wrong.h5", "w") as f:
        f["joints"] = np.zeros((10, 16, 2))
    assert_one_line_error(*run_cli(capsys, "eval", "--preds", PREDS, "--annot", tmp_path / "wrong.h5")[::2],
                          "missing dataset")
    (tmp_path / "text.h5").write_text("hello")
    assert_one_line_error(*run_cli(capsys, "eval", "--preds", tmp_path / "text.h5", "--annot", ANNOT)[::2], "HDF5")


def test_predict_with_the_shipped_checkpoint_reference(capsys, tmp_path):
    code, out, err = run_cli(capsys, "predict", PHOTO, "--model", "reference", "--flip", "--heatmaps",
                             "--out", tmp_path)
    assert code == 0, err
    assert "(shipped)" in out and "synthetic" in out
    result = json.loads((tmp_path / f"{PHOTO.stem}.json").read_text())
    # the default centre is the crop transform's identity centre (W/2, H/2), cropped as the original
    assert result["center"] == [result["width"] / 2, result["height"] / 2] and result["crop"] == "original"
    assert len(result["joints"]) == 16
    for joint in result["joints"].values():
        assert np.isfinite([joint["x"], joint["y"], joint["score"]]).all()
    for suffix in ("_pose.png", "_heatmaps.png"):
        png = tmp_path / f"{PHOTO.stem}{suffix}"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_predict_fast_default(capsys, tmp_path):
    code, _, err = run_cli(capsys, "predict", PHOTO, "--center", 300, 200, "--scale", 2.5, "--out", tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / f"{PHOTO.stem}.json").read_text())["center"] == [300, 200]


def test_predict_errors(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "predict", tmp_path / "none.jpg", "--out", tmp_path)[::2], "does not exist")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert_one_line_error(*run_cli(capsys, "predict", tmp_path / "bad.jpg", "--out", tmp_path)[::2], "cannot read image")
    assert_one_line_error(*run_cli(capsys, "predict", PHOTO, "--scale", "-1", "--out", tmp_path)[::2], "--scale")
    (tmp_path / "bad.pt").write_bytes(b"nope")
    assert_one_line_error(*run_cli(capsys, "predict", PHOTO, "--checkpoint", tmp_path / "bad.pt", "--model",
                                   "reference", "--out", tmp_path)[::2], "not a PyTorch checkpoint")


def test_train_cli_errors(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "train", "--res", "100", "--out", tmp_path)[::2], "--res")
    assert_one_line_error(*run_cli(capsys, "train", "--data", "mpii", "--model", "reference", "--out", tmp_path)[::2],
                          "--annot")


def test_shipped_checkpoint_is_small_and_described():
    assert SHIPPED_CHECKPOINT.stat().st_size < 8 * 2**20
    info = json.loads(SHIPPED_CHECKPOINT.with_suffix(".json").read_text())
    assert info["config"]["data"] == "synthetic" and "synthetic" in info["description"]


def test_shipped_checkpoint_learned_held_out_synthetic_poses():
    model, ckpt = model_from_checkpoint(SHIPPED_CHECKPOINT, "reference")
    held_out = SyntheticPoses(48, ckpt["config"]["res"], seed=424242)  # neither the training nor the val seed
    result = evaluate_pckh(model, held_out, batch_size=16, device=torch.device("cpu"))
    assert result["total_all16"] >= SHIPPED_MIN_PCKH


def test_train_cli_one_step(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--model", "reference", "--stacks", 1, "--features", 16, "--res", 64,
                             "--batch-size", 2, "--train-size", 2, "--val-size", 2, "--quiet", "--out", tmp_path)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 1
    assert (tmp_path / "last.pt").is_file()
