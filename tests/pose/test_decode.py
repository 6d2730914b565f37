"""Decoding: the original convention on known heatmaps, round trips, flip test."""

import numpy as np
import pytest
import torch
from torch import nn

from shg_fast.ops import decode_heatmaps
from shg_fast.pose.decode import heatmaps_to_image, predict_joints
from shg_fast.pose.targets import render_heatmaps
from shg_fast.pose.transforms import crop_matrix, transform_points
from tests.pose.test_transforms import original_get_transform

CENTER, SCALE, RES = (312.0, 207.5), 1.9, 64


def test_mpii_convention_on_a_known_peak():
    hm = torch.rand(1, 2, RES, RES) * 0.1
    hm[0, 0, 20, 37] = 1.0  # refinement: right and lower neighbours larger → +0.25 each
    hm[0, 0, 20, 38], hm[0, 0, 21, 37] = 0.5, 0.5
    hm[0, 1, 0, 5] = 1.0  # on the border: no refinement
    coords, _ = decode_heatmaps(hm)
    np.testing.assert_allclose(coords[0].numpy(), [[37.25, 20.25], [5.0, 0.0]])
    out = heatmaps_to_image(coords, [CENTER], [SCALE], RES)
    inv = np.linalg.inv(original_get_transform(CENTER, SCALE, 0.0, RES))
    q = coords[0].double().numpy() + 0.5
    expected = np.trunc((inv[:2, :2] @ q.T).T + inv[:2, 2] + 1e-4) + 1
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_allclose(heatmaps_to_image(coords, CENTER, SCALE, RES, convention="float")[0],
                               transform_points(q, CENTER, SCALE, 0.0, RES, invert=True), atol=1e-9)


@pytest.mark.parametrize("rot", [0.0, -20.0])
def test_round_trip_from_annotation_to_image(rot):
    rng = np.random.default_rng(3)
    joints1 = np.array(CENTER) + rng.uniform(-150, 150, size=(16, 2))  # 1-based MPII coordinates
    hm_pts = transform_points(joints1 - 1, CENTER, SCALE, rot, RES)
    maps = render_heatmaps(hm_pts, np.ones(16), (RES, RES), "torch7")
    coords, _ = decode_heatmaps(torch.from_numpy(maps)[None])
    back = heatmaps_to_image(coords, [CENTER], [SCALE], RES, rot=[rot])[0]
    pixel = 200 * SCALE / RES  # one heatmap pixel in image pixels
    assert np.abs(back - joints1).max() <= pixel * np.sqrt(0.5) + 1


def test_per_sample_parameters_and_errors():
    coords = torch.full((2, 16, 2), RES / 2 - 0.5)  # the pixel whose centre is the crop centre
    coords[1, 1] += 1
    out = heatmaps_to_image(coords, [[100, 100], [300, 50]], [1.0, 2.0], RES, convention="float")
    np.testing.assert_allclose(out[:, 0], [[100, 100], [300, 50]], atol=1e-9)
    np.testing.assert_allclose(out[1, 1], [300 + 400 / RES, 50 + 400 / RES], atol=1e-9)
    with pytest.raises(ValueError, match="center"):
        heatmaps_to_image(coords, [[1, 2, 3]], [1.0, 1.0], RES)
    with pytest.raises(ValueError, match="convention"):
        heatmaps_to_image(coords, CENTER, SCALE, RES, convention="pixels")
    with pytest.raises(ValueError, match="coords"):
        heatmaps_to_image(coords[0], CENTER, SCALE, RES)
    assert crop_matrix(CENTER, SCALE, 0.0, RES).shape == (2, 3)


class _DotModel(nn.Module):
    """Joint 0 (rank) sees the input's red channel pooled to heatmap size; the other maps are flat."""

    def forward(self, x):
        maps = torch.zeros(x.shape[0], 16, x.shape[2] // 4, x.shape[3] // 4)
        maps[:, 0] = nn.functional.avg_pool2d(x[:, :1], 4)[:, 0]
        return [maps]


def test_flip_test_mirrors_back_and_swaps_left_right():
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 20:24, 8:12] = 1.0  # heatmap pixel (2, 5)
    coords, maxvals, _ = predict_joints(_DotModel(), x, (32, 32), 64 / 200, convention="float")
    fcoords, fmax, _ = predict_joints(_DotModel(), x, (32, 32), 64 / 200, flip=True, convention="float")
    np.testing.assert_allclose(fcoords[0, 0], coords[0, 0])
    assert fmax[0, 0] == pytest.approx(maxvals[0, 0] / 2)
    # the left ankle (5) only sees the mirrored-back right ankle map of the flipped run
    np.testing.assert_allclose(fcoords[0, 5], coords[0, 0])
    assert fmax[0, 5] == pytest.approx(maxvals[0, 0] / 2)
    assert maxvals[0, 5] == 0
