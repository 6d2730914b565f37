"""The original code's person crop: one affine transform, its inverse, and the crop itself.

The original (``getTransform`` in the Torch7 training code) maps a 0-based image point ``p`` to
``res * ((p - center) / h + 0.5)`` with ``h = 200 * scale``, then rotates by ``-rot`` degrees
about ``(res/2, res/2)``. Its ``transform`` works on 1-based points: ``p - 1`` goes in, the
result is nudged by ``1e-4``, truncated to int, and ``+ 1`` makes it 1-based again. With this
matrix the crop of a W x H image at its own scale is the identity for ``center = (W/2, H/2)``.

Here the same matrix serves :func:`transform_points` (float, 0-based),
:func:`transform_points_original` (the original's integer 1-based ``transform``) and
:func:`crop`. The default crop is the original's ``crop`` (``img.lua``), reproduced bit for bit:
the whole-pixel box between ``transform((1, 1))`` and ``transform((res + 1, res + 1))`` inverted,
zero-padded outside the image (and widened, rotated by Torch7's bilinear ``image.rotate`` and
trimmed when ``rot`` is not 0), then rescaled by Torch7's bilinear ``image.scale``
(:func:`torch7_scale_bilinear`). ``crop(..., method="warp")`` is one ``cv2.warpAffine`` of the
matrix instead: faster, but not the original's input (it is off by up to about a pixel).

The box corners are computed in float64 here; the original used float32 tensors, so a corner
that lies within float32 rounding of a whole pixel (beyond the ``1e-4`` nudge) could snap the
other way there.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

__all__ = ["CROP_METHODS", "crop_matrix", "transform_points", "transform_points_original", "crop",
           "torch7_scale_bilinear", "torch7_scale_linear", "torch7_rotate_bilinear", "to_input"]

#: Pixels per unit of MPII ``scale`` (person height = 200 * scale).
SCALE_UNIT = 200.0


def _center_scale(center: Sequence[float], scale: float) -> tuple[np.ndarray, float]:
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    if c.shape != (2,) or not np.all(np.isfinite(c)):
        raise ValueError(f"center must be two finite numbers (x, y), got {center!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number (person height / 200 px), got {scale!r}")
    return c, float(scale)


def crop_matrix(center: Sequence[float], scale: float, rot: float, res: int,
                invert: bool = False) -> np.ndarray:
    """The (2, 3) float64 affine matrix of the crop, on 0-based coordinates.

    ``res`` is the side of the square output. With ``invert`` the matrix maps crop coordinates
    back to the image.
    """
    c, s = _center_scale(center, scale)
    if res <= 0:
        raise ValueError(f"res must be positive, got {res!r}")
    h = SCALE_UNIT * s
    t = np.eye(3)
    t[0, 0] = t[1, 1] = res / h
    t[:2, 2] = res * (-c / h + 0.5)
    if rot:
        ang = math.radians(-rot)
        r = np.eye(3)
        r[0, 0], r[0, 1], r[1, 0], r[1, 1] = math.cos(ang), -math.sin(ang), math.sin(ang), math.cos(ang)
        about = np.eye(3)
        about[:2, 2] = res / 2
        back = np.eye(3)
        back[:2, 2] = -res / 2
        t = about @ r @ back @ t
    if invert:
        t = np.linalg.inv(t)
    return t[:2]


def transform_points(points, center, scale, rot, res, invert: bool = False) -> np.ndarray:
    """Map float 0-based points ``(..., 2)`` from the image to the crop (or back with ``invert``)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {pts.shape}")
    m = crop_matrix(center, scale, rot, res, invert)
    return pts @ m[:, :2].T + m[:, 2]


def transform_points_original(points, center, scale, rot, res, invert: bool = False) -> np.ndarray:
    """The original ``transform``: 1-based points in, ``int(M (p - 1) + 1e-4) + 1`` out (int64)."""
    mapped = transform_points(np.asarray(points, dtype=np.float64) - 1, center, scale, rot, res, invert)
    return np.trunc(mapped + 1e-4).astype(np.int64) + 1


CROP_METHODS = ("original", "warp")


def crop(image: np.ndarray, center, scale, rot: float, res: int, method: str = "original",
         interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Crop ``image`` (H, W[, C]) around the person to ``res x res``.

    ``method="original"`` (default) is the original's ``crop``: a whole-pixel box, zero-padded
    outside the image, rotated by Torch7's bilinear ``image.rotate`` when ``rot`` is not 0, and
    rescaled by Torch7's bilinear ``image.scale``. It works on float images in [0, 1] as the
    original did (``image.load``): a uint8 image is first multiplied by ``float32(1/255)``, any
    other dtype is cast to float32, and the result is float32 of the same layout.

    ``method="warp"`` is one ``cv2.warpAffine`` of :func:`crop_matrix` (``interpolation`` applies
    to it only): pixel ``(x, y)`` of the crop shows the image at ``transform_points((x, y),
    invert=True)``. It keeps the image's dtype and is much faster (under a millisecond for a
    1280 x 720 photo, against tens of milliseconds), but its input differs from the original's by
    up to about a pixel of the image (no snapping to whole pixels, and other resampling grids).

    Pixels from outside the image are 0 either way, and where the original fails (a box under a
    pixel, or wholly outside the image) the crop is all 0; see :func:`to_input` for the
    network's float CHW input.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or 0 in image.shape[:2]:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got shape {shape}")
    if method == "warp":
        m = crop_matrix(center, scale, rot, res)
        return cv2.warpAffine(image, m, (res, res), flags=interpolation,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if method != "original":
        raise ValueError(f"method must be one of {CROP_METHODS}, got {method!r}")
    crop_matrix(center, scale, rot, res)  # the same argument checks as the warp
    return _crop_original(image, center, scale, rot, res)


def _crop_original(image: np.ndarray, center, scale, rot: float, res: int) -> np.ndarray:
    # The box corners: the original's integer inverse transform of the crop's corners (1, 1) and
    # (res + 1, res + 1), always without rotation; 1-based, ``br`` one past the box.
    ul = transform_points_original([1, 1], center, scale, 0.0, res, invert=True)
    br = transform_points_original([res + 1, res + 1], center, scale, 0.0, res, invert=True)
    # Rotation needs room for the box's corners: widen it by half the diagonal minus half the side.
    pad = math.floor(math.sqrt(float(np.sum((ul - br) ** 2))) / 2 - (br[0] - ul[0]) / 2)
    if rot:
        ul, br = ul - pad, br + pad
    box_w, box_h = int(br[0] - ul[0]), int(br[1] - ul[1])
    grey = image.ndim == 2
    channels = 1 if grey else image.shape[2]
    out_shape = (res, res) if grey else (res, res, channels)
    if box_w <= 0 or box_h <= 0:  # a box under one pixel wide (the original fails on it): nothing to show
        return np.zeros(out_shape, np.float32)
    src = image.reshape(image.shape[0], image.shape[1], channels)
    box = np.zeros((box_h, box_w, channels), np.float32)
    # 0-based box pixel (x, y) shows image pixel (x + ul[0] - 1, y + ul[1] - 1); only the part
    # inside the image is copied, the rest stays 0.
    x0, y0 = int(ul[0]) - 1, int(ul[1]) - 1
    xs = slice(max(0, x0), min(src.shape[1], x0 + box_w))
    ys = slice(max(0, y0), min(src.shape[0], y0 + box_h))
    if xs.start < xs.stop and ys.start < ys.stop:
        part = src[ys, xs]
        # image.load's conversion (a multiplication by float32(1/255)), only on the pixels used.
        part = part.astype(np.float32) * np.float32(1 / 255) if part.dtype == np.uint8 else part.astype(np.float32)
        box[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = part
    if rot:
        # The original keeps 1-based rows and columns pad .. side - pad of the rotated box; a pad
        # of 0 (a box under 5 px, where the original fails) keeps everything.
        first = max(pad - 1, 0)
        box = torch7_rotate_bilinear(box, rot * math.pi / 180, slice(first, box_h - pad), slice(first, box_w - pad))
    out = torch7_scale_bilinear(box, res, res)
    return out.reshape(out_shape)


def torch7_scale_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Torch7's ``image.scale(img, width, height)`` (mode ``'bilinear'``) of a float32 (H, W[, C]).

    Separable: every row is resampled to ``width``, then every column to ``height``, each by
    :func:`torch7_scale_linear`; the result is bit-for-bit Torch7's on a FloatTensor.
    """
    img = np.asarray(image, dtype=np.float32)
    rows_done = np.moveaxis(torch7_scale_linear(np.moveaxis(img, 1, 0), width), 0, 1)
    return torch7_scale_linear(rows_done, height)


def torch7_scale_linear(src: np.ndarray, dst_len: int) -> np.ndarray:
    """Resample float32 ``src`` along its first axis to ``dst_len`` as Torch7's ``scaleLinear_rowcol``.

    Enlarging interpolates linearly with the end points aligned (``scale = (n - 1) / (m - 1)``);
    shrinking averages the source over each destination pixel's interval of width
    ``scale = n / m`` (partial pixels weighted by their overlap). All arithmetic is float32 in the
    original's order, so results match bit for bit: the shrink's sums are accumulated term by
    term for all destination pixels at once.
    """
    src = np.asarray(src, dtype=np.float32)
    src_len = src.shape[0]
    one = np.float32(1)
    if dst_len == src_len:
        return src.copy()
    out = np.empty((dst_len,) + src.shape[1:], np.float32)
    lead = (slice(None),) + (None,) * (src.ndim - 1)  # per-position factors broadcast over the rest
    if dst_len > src_len:
        if src_len == 1:
            out[:] = src[0]
            return out
        step = np.float32(src_len - 1) / np.float32(dst_len - 1)
        pos = np.arange(dst_len - 1, dtype=np.float32) * step
        idx = pos.astype(np.int64)
        frac = pos - idx.astype(np.float32)
        out[:-1] = (one - frac)[lead] * src[idx] + frac[lead] * src[idx + 1]
        out[-1] = src[-1]
        return out
    step = np.float32(src_len) / np.float32(dst_len)
    end_pos = np.arange(1, dst_len + 1, dtype=np.float32) * step
    end_idx = end_pos.astype(np.int64)
    end_frac = end_pos - end_idx.astype(np.float32)
    # Each interval starts where the previous one ended (the first at 0).
    start_idx = np.concatenate([[0], end_idx[:-1]])
    start_frac = np.concatenate([np.zeros(1, np.float32), end_frac[:-1]])
    acc = (one - start_frac)[lead] * src[start_idx]
    weight = one - start_frac
    whole = end_idx - start_idx - 1  # whole source pixels strictly inside each interval
    last = src_len - 1
    for k in range(int(whole.max(initial=0))):
        inside = k < whole
        # Adding 0 where the interval has no k-th pixel leaves the float32 sum unchanged.
        acc = acc + np.where(inside[lead], src[np.minimum(start_idx + 1 + k, last)], np.float32(0))
        weight = weight + np.where(inside, one, np.float32(0))
    tail = end_idx < src_len
    acc = np.where(tail[lead], acc + end_frac[lead] * src[np.minimum(end_idx, last)], acc)
    weight = np.where(tail, weight + end_frac, weight)
    out[:] = acc / weight[lead]
    return out


def torch7_rotate_bilinear(image: np.ndarray, theta: float, rows: slice = slice(None),
                           cols: slice = slice(None)) -> np.ndarray:
    """Torch7's ``image.rotate(img, theta, 'bilinear')`` of a float32 (H, W, C), same size.

    Output pixel ``(i, j)`` samples the source at ``R(theta) (i - w/2, j - h/2)`` (computed in
    double, stored as float32) shifted back by the *truncated* centre ``(w // 2, h // 2)``,
    bilinearly in double; samples whose 2x2 neighbourhood leaves the image are 0. Only the output
    ``rows`` and ``cols`` are computed and returned (the crop keeps about half of its rotation).
    """
    h, w = image.shape[:2]
    theta = float(np.float32(theta))  # the C code receives a float
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    xc, yc = w / 2.0, h / 2.0
    dx = (np.arange(w, dtype=np.float32)[cols] - np.float32(xc)).astype(np.float64)[None, :]
    dy = (np.arange(h, dtype=np.float32)[rows] - np.float32(yc)).astype(np.float64)[:, None]
    ri = (cos_t * dx - sin_t * dy).astype(np.float32)
    rj = (cos_t * dy + sin_t * dx).astype(np.float32)
    ri_floor, rj_floor = np.floor(ri), np.floor(rj)
    i0 = ri_floor.astype(np.int64) + int(xc)
    j0 = rj_floor.astype(np.int64) + int(yc)
    inside = np.flatnonzero((i0 >= 0) & (j0 >= 0) & (i0 + 1 <= w - 1) & (j0 + 1 <= h - 1))
    # Only the samples with a whole 2x2 neighbourhood are computed; the rest stay 0.
    wi = (ri - ri_floor).ravel()[inside].astype(np.float64)[:, None]
    wj = (rj - rj_floor).ravel()[inside].astype(np.float64)[:, None]
    top_left = j0.ravel()[inside] * w + i0.ravel()[inside]
    flat = image.reshape(h * w, -1)
    # float64 weights times float32 pixels is double arithmetic, summed in the C code's order.
    val = ((1.0 - wi) * (1.0 - wj) * flat[top_left] + wi * (1.0 - wj) * flat[top_left + 1]
           + (1.0 - wi) * wj * flat[top_left + w] + wi * wj * flat[top_left + w + 1])
    out = np.zeros((ri.size, flat.shape[1]), np.float32)
    out[inside] = val
    return out.reshape(ri.shape + image.shape[2:])


def to_input(image_rgb: np.ndarray) -> np.ndarray:
    """A uint8 (or float in [0, 1]) RGB image (H, W, 3) as float32 CHW in [0, 1]."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image_rgb.shape}")
    img = image_rgb.astype(np.float32)
    if image_rgb.dtype == np.uint8:
        img /= 255.0
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0).transpose(2, 0, 1))

