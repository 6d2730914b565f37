"""The crop transform: against the original's formulas, its inverse, and the warped image."""

import math

import numpy as np
import pytest

from shg_fast.pose.transforms import crop, crop_matrix, to_input, transform_points, transform_points_original

CASES = [((320.5, 240.0), 1.7, 0.0, 64), ((101.0, 77.3), 0.6, 23.0, 256), ((13.0, 400.0), 3.1, -30.0, 19)]


def original_get_transform(center, scale, rot, res):
    """The Torch7 getTransform, transcribed: scale, translate, then rotate -rot about the crop centre."""
    h = 200 * scale
    t = np.eye(3)
    t[0, 0] = t[1, 1] = res / h
    t[0, 2] = res * (-center[0] / h + 0.5)
    t[1, 2] = res * (-center[1] / h + 0.5)
    if rot != 0:
        ang = -rot * math.pi / 180
        r = np.array([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]])
        t_ = np.array([[1, 0, -res / 2], [0, 1, -res / 2], [0, 0, 1]])
        t_inv = np.array([[1, 0, res / 2], [0, 1, res / 2], [0, 0, 1]])
        t = t_inv @ r @ t_ @ t
    return t


@pytest.mark.parametrize("center,scale,rot,res", CASES)
def test_matrix_matches_original_formula(center, scale, rot, res):
    np.testing.assert_allclose(crop_matrix(center, scale, rot, res), original_get_transform(center, scale, rot, res)[:2],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("center,scale,rot,res", CASES)
def test_points_round_trip(center, scale, rot, res):
    pts = np.random.default_rng(1).uniform(-50, 500, size=(7, 2))
    there = transform_points(pts, center, scale, rot, res)
    np.testing.assert_allclose(transform_points(there, center, scale, rot, res, invert=True), pts, atol=1e-9)
    m, minv = crop_matrix(center, scale, rot, res), crop_matrix(center, scale, rot, res, invert=True)
    np.testing.assert_allclose(np.vstack([minv, [0, 0, 1]]) @ np.vstack([m, [0, 0, 1]]), np.eye(3), atol=1e-9)


def test_centre_maps_to_crop_centre_and_scale():
    center, scale, res = (200.0, 150.0), 1.5, 64
    np.testing.assert_allclose(transform_points([center], center, scale, 17.0, res), [[res / 2, res / 2]], atol=1e-12)
    # a person of height 200 * scale spans exactly res pixels (no rotation)
    top, bottom = transform_points([[200.0, 0.0], [200.0, 300.0]], center, scale, 0.0, res)
    assert bottom[1] - top[1] == pytest.approx(res)


def test_original_integer_transform():
    center, scale, rot, res = (320.0, 240.0), 1.3, 12.0, 64
    pts1 = np.array([[100.0, 50.0], [321.0, 241.0], [400.5, 300.25]])
    expected = np.trunc(original_get_transform(center, scale, rot, res)[:2] @ np.c_[pts1 - 1, np.ones(3)].T + 1e-4).T + 1
    out = transform_points_original(pts1, center, scale, rot, res)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("rot", [0.0, 25.0])
@pytest.mark.parametrize("dot", [(60, 35), (80, 52), (71, 39)])
def test_crop_puts_image_points_where_the_transform_says(rot, dot):
    center, scale, res = (70.0, 42.0), 0.2, 64  # 1.6x magnification: bilinear keeps the centroid
    img = np.zeros((90, 130), dtype=np.float32)
    img[dot[1], dot[0]] = 1.0
    out = crop(img, center, scale, rot, res).astype(np.float64)
    tx, ty = transform_points([dot], center, scale, rot, res)[0]
    ys, xs = np.mgrid[0:res, 0:res]
    w = out / out.sum()
    assert abs((w * xs).sum() - tx) < 0.15 and abs((w * ys).sum() - ty) < 0.15  # a half-pixel slip fails


def test_crop_keeps_channels_and_blank_outside():
    img = np.random.default_rng(0).integers(1, 256, size=(40, 50, 3), dtype=np.uint8)
    out = crop(img, (25, 20), 2.0, 0.0, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[0, 0].sum() == 0 and out[32, 32].sum() > 0
    x = to_input(out)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(center=(1, 2, 3), scale=1.0), "center"),
    (dict(center=(1, 2), scale=0.0), "scale"),
    (dict(center=(1, 2), scale=float("nan")), "scale"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        crop_matrix(rot=0.0, res=64, **kwargs)


def test_bad_image():
    with pytest.raises(ValueError, match="image"):
        crop(np.zeros((0, 5, 3), np.uint8), (1, 1), 1.0, 0.0, 64)
