"""The crop transform: against the original's formulas, its inverse, and the cropped image."""

import cv2
import numpy as np
import pytest

from shg_fast.pose.transforms import (CROP_METHODS, crop, crop_matrix, to_input, transform_points,
                                      transform_points_original)
from tests.pose.original_crop import f32, original_crop, original_get_transform

CASES = [((320.5, 240.0), 1.7, 0.0, 64), ((101.0, 77.3), 0.6, 23.0, 256), ((13.0, 400.0), 3.1, -30.0, 19)]


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
def test_warp_crop_puts_image_points_where_the_transform_says(rot, dot):
    center, scale, res = (70.0, 42.0), 0.2, 64  # 1.6x magnification: bilinear keeps the centroid
    img = np.zeros((90, 130), dtype=np.float32)
    img[dot[1], dot[0]] = 1.0
    out = crop(img, center, scale, rot, res, method="warp").astype(np.float64)
    tx, ty = transform_points([dot], center, scale, rot, res)[0]
    ys, xs = np.mgrid[0:res, 0:res]
    w = out / out.sum()
    assert abs((w * xs).sum() - tx) < 0.15 and abs((w * ys).sum() - ty) < 0.15  # a half-pixel slip fails


@pytest.mark.parametrize("method,dtype", [("original", np.float32), ("warp", np.uint8)])
def test_crop_keeps_channels_and_blank_outside(method, dtype):
    img = np.random.default_rng(0).integers(1, 256, size=(40, 50, 3), dtype=np.uint8)
    out = crop(img, (25, 20), 2.0, 0.0, 64, method=method)
    assert out.shape == (64, 64, 3) and out.dtype == dtype
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


def test_bad_method():
    with pytest.raises(ValueError, match="'original', 'warp'"):
        crop(np.zeros((5, 5, 3), np.uint8), (1, 1), 1.0, 0.0, 64, method="bilinear")
    assert CROP_METHODS == ("original", "warp")


def _transcribed(img, center, scale, rot, res):
    """The transcription of the original's crop on an (H, W[, C]) float32 image, in the same layout."""
    chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    out = original_crop(np.ascontiguousarray(chw), center, scale, rot, res)
    return out[0] if img.ndim == 2 else out.transpose(1, 2, 0)


def _image(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# (image shape, centre, scale, rot, res): odd sizes, RGB and grey; fractional and whole-number centres;
# boxes that enlarge (box < res) and shrink (box > res), partly outside the image; rotations.
ORIGINAL_CASES = [
    ((37, 53, 3), (26.5, 18.5), 0.185, 0.0, 32),  # the whole image, square box of 37 px: shrink
    ((37, 53, 3), (20.3, 17.71), 0.11, 0.0, 48),  # fractional centre, 22 px box: enlarge
    ((37, 53, 3), (40.0, 30.0), 0.2, 0.0, 33),  # whole-number centre, box past the bottom right corner
    ((37, 53, 3), (3.4, -2.2), 0.13, 0.0, 16),  # box past the top left corner, shrink to an odd size
    ((37, 53, 3), (17.5, 11.5), 0.085, 0.0, 48),  # box corners a rounding error under whole pixels: the 1e-4
    ((37, 53, 3), (17.0, 11.0), 0.07, 0.0, 32),  # nudge keeps them there (whole-number centre)
    ((101, 67), (33.5, 50.5), 0.5, 0.0, 64),  # grey, 100 px box past the sides: shrink
    ((101, 67), (60.25, 90.8), 0.2701, 0.0, 64),  # grey, fractional scale and centre
    ((37, 53, 3), (26.6, 18.2), 0.15, 17.5, 32),  # rotations: the widened box rotated by Torch7, then trimmed
    ((101, 67), (30.0, 70.0), 0.42, -30.0, 40),
    ((101, 67, 3), (66.7, 10.1), 0.33, 8.0, 48),
]


@pytest.mark.parametrize("shape,center,scale,rot,res", ORIGINAL_CASES)
def test_original_crop_is_the_transcribed_original_bit_for_bit(shape, center, scale, rot, res):
    """Every step is float32 as Torch7's FloatTensor code, or double where the C code is (the rotation's
    coordinates and weights), in the C code's order: so the results are equal, not just close."""
    img = _image(shape)
    out = crop(img, center, scale, rot, res)
    assert out.dtype == np.float32 and out.shape == (res, res) + shape[2:]
    np.testing.assert_array_equal(out, _transcribed(img, center, scale, rot, res))


def test_original_crop_of_uint8_is_image_load_scaling():
    """A uint8 image is scaled as image.load does (times float32(1/255)), then cropped."""
    img = np.random.default_rng(3).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    as_loaded = img.astype(np.float32) * f32(1 / 255)
    np.testing.assert_array_equal(crop(img, (20.3, 17.71), 0.11, 0.0, 48),
                                  _transcribed(as_loaded, (20.3, 17.71), 0.11, 0.0, 48))


def test_original_crop_at_the_identity_centre_is_the_image():
    """A W x H image at its own scale and size, centred at (W/2, H/2), comes back unchanged: the
    transform's identity centre. The pixel-centre convention's ((W-1)/2, (H-1)/2) does not."""
    img = _image((41, 41, 3), seed=5)
    np.testing.assert_array_equal(crop(img, (20.5, 20.5), 41 / 200, 0.0, 41), img)
    assert not np.allclose(crop(img, (20.0, 20.0), 41 / 200, 0.0, 41), img, atol=0.05)


def test_original_crop_box_is_whole_pixels():
    """Moving the centre by less than the snapping step leaves the crop unchanged while the truncated
    box corners stay; the warp moves with the centre."""
    img, scale, res = _image((67, 101, 3), seed=2), 0.2, 48  # a 40 px box
    base, nudged, across = (50.2, 30.2), (50.6, 30.7), (51.2, 30.2)  # box corners 30.2 -> 30.6, then 31.2
    corners = [transform_points_original([[1, 1], [res + 1, res + 1]], c, scale, 0.0, res, invert=True)
               for c in (base, nudged, across)]
    np.testing.assert_array_equal(corners[0], corners[1])
    assert not np.array_equal(corners[0], corners[2])
    np.testing.assert_array_equal(crop(img, base, scale, 0.0, res), crop(img, nudged, scale, 0.0, res))
    assert not np.array_equal(crop(img, base, scale, 0.0, res), crop(img, across, scale, 0.0, res))
    assert not np.array_equal(crop(img, base, scale, 0.0, res, method="warp"),
                              crop(img, nudged, scale, 0.0, res, method="warp"))


def test_original_crop_enlarges_with_aligned_corners():
    """Torch7's enlarging rescale puts the box's first and last pixels on the crop's first and last
    (OpenCV's bilinear resize aligns pixel centres instead, a different input to the network)."""
    img = _image((37, 53, 3), seed=4)
    box = img[0:37, 8:45]  # the whole-image box of a 37 px crop centred at (26.5, 18.5)
    out = crop(img, (26.5, 18.5), 0.185, 0.0, 64)
    np.testing.assert_array_equal(out[[0, 0, -1, -1], [0, -1, 0, -1]], box[[0, 0, -1, -1], [0, -1, 0, -1]])
    assert np.abs(out - cv2.resize(box, (64, 64), interpolation=cv2.INTER_LINEAR)).max() > 0.05
