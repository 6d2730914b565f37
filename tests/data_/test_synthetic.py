"""Synthetic stick figures: reproducible, annotated where drawn, targets where the joints are."""

import numpy as np
import pytest
import torch

from shg_fast.data.synthetic import SyntheticPoses, draw_stick_figure
from shg_fast.ops import decode_heatmaps
from shg_fast.pose.decode import heatmaps_to_image


def test_reproducible_and_seed_dependent():
    a, b, c = SyntheticPoses(3, 64, seed=1), SyntheticPoses(3, 64, seed=1), SyntheticPoses(3, 64, seed=2)
    assert torch.equal(a[2]["input"], b[2]["input"])
    assert not torch.equal(a[2]["input"], c[2]["input"])


def test_joints_are_drawn_in_the_image():
    fig = draw_stick_figure(np.random.default_rng(5), 96)
    img, joints = fig["image"], fig["joints"]
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert joints.shape == (16, 2) and (joints >= 0).all() and (joints < 96).all()
    for x, y in joints.round().astype(int):  # every joint carries a white dot
        assert img[y, x].min() >= 200
    assert fig["normalize"] > 0 and fig["scale"] > 0


@pytest.mark.parametrize("augment", [False, True])
def test_item_layout_and_targets_decode_to_the_joints(augment):
    ds = SyntheticPoses(4, 64, seed=3, augment=augment, sigma="torch7")
    item = ds[1]
    assert item["input"].shape == (3, 64, 64) and item["input"].dtype == torch.float32
    assert 0 <= item["input"].min() and item["input"].max() <= 1
    assert item["target"].shape == (16, 16, 16)
    inside = item["target"].flatten(1).amax(1) > 0
    coords, _ = decode_heatmaps(item["target"][None])
    back = heatmaps_to_image(coords, item["center"][None].numpy(), item["scale"][None].numpy(), 16,
                             item["rot"][None].numpy(), convention="float")[0]
    pixel = 200 * item["scale"].item() / 16
    err = np.linalg.norm(back - item["joints"].numpy(), axis=1)
    assert inside.sum() >= 12 and (err[inside.numpy()] <= pixel * 0.75).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 64"):
        SyntheticPoses(4, 100)
    with pytest.raises(IndexError):
        SyntheticPoses(4, 64)[4]
