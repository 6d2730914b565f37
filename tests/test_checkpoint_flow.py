"""One checkpoint format through the CLI: a port's checkpoint -> convert -> predict; train --init / --resume."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shg_fast import convert
from shg_fast.data.mpii import read_image_rgb
from shg_fast.checkpoints import SHIPPED_CHECKPOINT, load_checkpoint
from shg_fast.pose.decode import predict_joints
from shg_fast.pose.joints import MPII_JOINTS
from shg_fast.pose.transforms import SCALE_UNIT, crop, to_input
from .helpers import randomize_bn
from .pose.test_cli import PHOTO, assert_one_line_error, run_cli
from .ports import BearpawHourglassNet, PrincetonPoseNet

pytestmark = pytest.mark.usefixtures("one_thread")

#: A tiny run: 3 steps per epoch.
TRAIN = ("--stacks", 1, "--features", 16, "--res", 64, "--batch-size", 2, "--train-size", 6, "--val-size", 2,
         "--quiet", "--model", "reference")


def _port_joints(port_forward, res: int = 256) -> np.ndarray:
    """Joints of PHOTO decoded from ``port_forward`` (NCHW RGB in [0, 1] -> list of heatmaps), as predict does."""
    image = read_image_rgb(PHOTO)
    h, w = image.shape[:2]
    center, scale = np.array((w / 2, h / 2)), max(h, w) / SCALE_UNIT
    x = torch.from_numpy(to_input(crop(image, center, scale, 0.0, res)))[None]
    with torch.no_grad():
        coords, maxvals, _ = predict_joints(port_forward, x, center, scale, convention="float")
    return np.concatenate([coords[0], maxvals[0][:, None]], axis=1)


def _near_tie_joints(port_forward64, res: int = 256, rel: float = 1e-5) -> np.ndarray:
    """Per joint, whether the float64 port's last heatmap has a second pixel within ``rel`` of its maximum.

    Two pixels that close are equal to float32 precision: a float32 model may pick either, as any
    two correct float32 implementations may, so for those joints the argmax pixel cannot be compared.
    """
    image = read_image_rgb(PHOTO)
    h, w = image.shape[:2]
    center, scale = np.array((w / 2, h / 2)), max(h, w) / SCALE_UNIT
    x = torch.from_numpy(to_input(crop(image, center, scale, 0.0, res)))[None].double()
    with torch.no_grad():
        top2 = port_forward64(x)[-1][0].flatten(1).topk(2, dim=1).values
    return ((top2[:, 0] - top2[:, 1]).abs() <= rel * top2[:, 0].abs()).numpy()


def _assert_same_joints(got: np.ndarray, expected: np.ndarray, ties: np.ndarray) -> None:
    """Scores everywhere; coordinates where the argmax is not a float32 tie, and within a heatmap pixel where it is."""
    np.testing.assert_allclose(got[:, 2], expected[:, 2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[~ties, :2], expected[~ties, :2], rtol=1e-4, atol=1e-4)
    image = read_image_rgb(PHOTO)
    pixel = max(image.shape[:2]) / 64  # one heatmap pixel (the 256 crop covers the longer side) in image units
    assert np.abs(got[ties, :2] - expected[ties, :2]).max(initial=0) <= pixel + 1e-4


def _predicted_joints(capsys, tmp_path, checkpoint, model) -> np.ndarray:
    out = tmp_path / model
    code, _, err = run_cli(capsys, "predict", PHOTO, "--checkpoint", checkpoint, "--model", model, "--out", out)
    assert code == 0, err
    joints = json.loads((out / f"{PHOTO.stem}.json").read_text())["joints"]
    return np.array([[joints[n]["x"], joints[n]["y"], joints[n]["score"]] for n in MPII_JOINTS])


def _bearpaw_file(path: Path) -> tuple[Path, BearpawHourglassNet]:
    """A checkpoint as bearpaw's training script saves it (DataParallel's ``module.`` prefix)."""
    port = randomize_bn(BearpawHourglassNet(num_stacks=2, num_blocks=1, num_classes=16, num_feats=8)).eval()
    state = {f"module.{k}": v for k, v in port.state_dict().items()}
    torch.save({"epoch": 5, "arch": "hg", "state_dict": state, "perf": 0.5}, path)
    return path, port


@pytest.mark.parametrize("model", ["reference", "fast"])
def test_bearpaw_checkpoint_convert_predict_same_joints(capsys, tmp_path, model):
    path, port = _bearpaw_file(tmp_path / "bearpaw.pth.tar")
    code, out, err = run_cli(capsys, "convert", path, tmp_path / "ours.pt")
    assert code == 0, err
    assert "stem='bearpaw'" in out and "input_mean" in out
    mean = torch.tensor(convert.MPII_RGB_MEAN).view(1, 3, 1, 1)
    expected = _port_joints(lambda x: port(x - mean))  # bearpaw feeds mean-subtracted crops
    got = _predicted_joints(capsys, tmp_path, tmp_path / "ours.pt", model)
    port64 = copy.deepcopy(port).double()
    ties = _near_tie_joints(lambda x: port64(x - mean.double()))
    _assert_same_joints(got, expected, ties)


def test_princeton_checkpoint_convert_predict_same_joints(capsys, tmp_path):
    port = randomize_bn(PrincetonPoseNet(nstack=2, inp_dim=16, oup_dim=16)).eval()
    torch.save({"state_dict": {f"model.module.{k}": v for k, v in port.state_dict().items()}}, tmp_path / "p.pt")
    assert run_cli(capsys, "convert", tmp_path / "p.pt", tmp_path / "ours.pt")[0] == 0
    expected = _port_joints(lambda x: list(port(x.permute(0, 2, 3, 1)).unbind(1)))  # NHWC in, stacked out
    port64 = copy.deepcopy(port).double()
    ties = _near_tie_joints(lambda x: list(port64(x.permute(0, 2, 3, 1)).unbind(1)))
    _assert_same_joints(_predicted_joints(capsys, tmp_path, tmp_path / "ours.pt", "fast"), expected, ties)


def test_unconverted_checkpoint_says_convert_first(capsys, tmp_path):
    path, _ = _bearpaw_file(tmp_path / "bearpaw.pth.tar")
    assert_one_line_error(*run_cli(capsys, "predict", PHOTO, "--checkpoint", path, "--out", tmp_path)[::2],
                          "shg-fast convert")


def test_train_resume_continues_with_the_same_losses(capsys, tmp_path):
    """An uninterrupted run of 2 epochs, and one stopped mid-epoch 2 then resumed: the same per-step losses."""
    assert run_cli(capsys, "train", *TRAIN, "--epochs", 2, "--out", tmp_path / "a")[0] == 0
    code, _, err = run_cli(capsys, "train", *TRAIN, "--epochs", 2, "--max-steps", 4, "--save-every", 1,
                           "--out", tmp_path / "b")
    assert code == 0, err
    stopped = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (stopped["epoch"], stopped["epoch_step"], len(stopped["history"]["loss"])) == (1, 1, 4)
    assert not list((tmp_path / "b").glob("*.tmp*"))
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "b" / "last.pt", "--max-steps", 0, "--quiet",
                           "--out", tmp_path / "b")
    assert code == 0, err
    uninterrupted = json.loads((tmp_path / "a" / "history.json").read_text())["loss"]
    resumed = json.loads((tmp_path / "b" / "history.json").read_text())["loss"]
    assert len(uninterrupted) == 6 and resumed == uninterrupted
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2


def test_save_every_writes_mid_epoch(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *TRAIN, "--train-size", 12, "--max-steps", 2, "--save-every", 2,
                           "--val-size", 2, "--out", tmp_path)
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["epoch"], ckpt["epoch_step"]) == (0, 2) and "state" in ckpt["optimizer"]
    assert_one_line_error(*run_cli(capsys, "train", *TRAIN, "--save-every", -1, "--out", tmp_path)[::2],
                          "--save-every")


def test_resume_refuses_conflicting_options_by_name(capsys, tmp_path):
    assert run_cli(capsys, "train", *TRAIN, "--max-steps", 1, "--out", tmp_path)[0] == 0
    last = tmp_path / "last.pt"
    for option, value in (("--res", 128), ("--stacks", 2), ("--lr", 0.1), ("--stem", "bearpaw")):
        code, _, err = run_cli(capsys, "train", "--resume", last, option, value, "--out", tmp_path)
        assert_one_line_error(code, err, f"{option} {value} conflicts")
    code, _, err = run_cli(capsys, "train", "--resume", last, "--res", 64, "--max-steps", 2, "--quiet",
                           "--out", tmp_path)
    assert code == 0, err  # the same value is no conflict


def test_resume_from_weights_only_says_use_init(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--resume", SHIPPED_CHECKPOINT, "--out", tmp_path)
    assert_one_line_error(code, err, "no optimizer", f"--init {SHIPPED_CHECKPOINT}")


def test_init_fine_tunes_from_any_checkpoint(capsys, tmp_path):
    """--init takes the model options from the checkpoint: a converted bearpaw file, the shipped model."""
    path, _ = _bearpaw_file(tmp_path / "bearpaw.pth.tar")
    assert run_cli(capsys, "convert", path, tmp_path / "ours.pt")[0] == 0
    for init in (tmp_path / "ours.pt", path, SHIPPED_CHECKPOINT):
        out = tmp_path / init.stem
        code, _, err = run_cli(capsys, "train", "--init", init, "--res", 64, "--batch-size", 2, "--train-size", 2,
                               "--val-size", 2, "--quiet", "--model", "reference", "--out", out)
        assert code == 0, err
        source, tuned = convert.convert_checkpoint(init), load_checkpoint(out / "last.pt")
        for key in ("num_stacks", "num_features", "stem", "input_mean"):
            assert tuned["config"][key] == source["config"][key], key
        assert len(tuned["history"]["loss"]) == 1
    assert_one_line_error(*run_cli(capsys, "train", "--init", tmp_path / "ours.pt", "--stacks", 8,
                                   "--out", tmp_path / "x")[::2], "--stacks 8 conflicts")
    assert_one_line_error(*run_cli(capsys, "train", "--init", path, "--resume", path, "--out", tmp_path / "x")[::2],
                          "not both")


def test_convert_accepts_a_training_run_checkpoint(capsys, tmp_path):
    assert run_cli(capsys, "train", *TRAIN, "--max-steps", 1, "--out", tmp_path / "run")[0] == 0
    code, out, err = run_cli(capsys, "convert", tmp_path / "run" / "last.pt", tmp_path / "weights.pt")
    assert code == 0, err
    assert "(shg_fast)" in out
    converted = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert "optimizer" not in converted and converted["config"]["res"] == 64
    code, _, err = run_cli(capsys, "predict", PHOTO, "--checkpoint", tmp_path / "weights.pt", "--out", tmp_path)
    assert code == 0, err
