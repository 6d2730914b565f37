"""Gaussian targets: the torch7 table, sigma, placement and all-zero maps."""

import numpy as np
import pytest

from shg_fast.pose.targets import TORCH7, gaussian_patch, render_heatmaps


def test_torch7_table_matches_the_documented_rows():
    g = gaussian_patch(TORCH7)
    assert g.shape == (7, 7)
    np.testing.assert_allclose(g[3], [0.2301, 0.5205, 0.8494, 1.0, 0.8494, 0.5205, 0.2301], atol=5e-5)
    np.testing.assert_allclose(g, np.outer(g[3], g[3]), rtol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 0.7])
def test_numeric_sigma(sigma):
    g = gaussian_patch(sigma)
    r = int(np.ceil(3 * sigma))
    assert g.shape == (2 * r + 1, 2 * r + 1) and g[r, r] == 1.0
    assert g[r, r + 1] == pytest.approx(np.exp(-1 / (2 * sigma**2)), rel=1e-6)


def test_maps_peak_at_the_joint_pixel_and_clip_at_the_border():
    joints = np.array([[5.7, 3.2], [0.4, 9.9], [18.99, 0.0]])
    maps = render_heatmaps(joints, [1, 1, 1], (11, 19), sigma=TORCH7)
    assert maps.shape == (3, 11, 19) and maps.dtype == np.float32
    for k, (x, y) in enumerate(joints):
        assert np.unravel_index(maps[k].argmax(), maps[k].shape) == (int(y), int(x))
        assert maps[k].max() == 1.0
    g = gaussian_patch(TORCH7)
    np.testing.assert_array_equal(maps[0, 0:7, 2:9], g[:, :])  # fully inside: centred at (5, 3)
    np.testing.assert_array_equal(maps[1, 6:11, 0:4], g[:5, 3:])  # clipped at bottom-left


@pytest.mark.parametrize("joint", [(-0.01, 4.0), (19.0, 4.0), (3.0, 11.5), (np.nan, 2.0)])
def test_outside_or_invalid_joint_gives_zero_map(joint):
    maps = render_heatmaps([joint, (3.0, 3.0)], [1, 1], (11, 19))
    assert not maps[0].any() and maps[1].any()


def test_unannotated_joint_gives_zero_map():
    maps = render_heatmaps([(3.0, 3.0), (4.0, 4.0)], [0, 1], (8, 8), sigma=1.5)
    assert not maps[0].any() and maps[1].max() == 1.0


@pytest.mark.parametrize("sigma", [0, -1.0, "gauss", True])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        gaussian_patch(sigma)


def test_bad_shapes():
    with pytest.raises(ValueError, match="visible"):
        render_heatmaps(np.zeros((3, 2)), [1, 1], (8, 8))
