"""The original code's person crop: one affine transform, its inverse, and the crop itself.

The original (``getTransform`` in the Torch7 training code) maps a 0-based image point ``p`` to
``res * ((p - center) / h + 0.5)`` with ``h = 200 * scale``, then rotates by ``-rot`` degrees
about ``(res/2, res/2)``. Its ``transform`` works on 1-based points: ``p - 1`` goes in, the
result is nudged by ``1e-4``, truncated to int, and ``+ 1`` makes it 1-based again.

Here the same matrix serves three uses: :func:`transform_points` (float, 0-based),
:func:`transform_points_original` (the original's integer 1-based ``transform``) and
:func:`crop` (one ``cv2.warpAffine`` of the image, so pixel ``(x, y)`` of the crop shows the image
at ``transform_points((x, y), invert=True)``).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

__all__ = ["crop_matrix", "transform_points", "transform_points_original", "crop", "to_input"]

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


def crop(image: np.ndarray, center, scale, rot: float, res: int,
         interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Crop, scale and rotate ``image`` (H, W[, C]) to ``res x res`` in one ``cv2.warpAffine``.

    Pixels from outside the image are 0. The dtype is kept; see :func:`to_input` for the
    network's float RGB in [0, 1].
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or 0 in image.shape[:2]:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got shape {shape}")
    m = crop_matrix(center, scale, rot, res)
    return cv2.warpAffine(image, m, (res, res), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def to_input(image_rgb: np.ndarray) -> np.ndarray:
    """A uint8 (or float in [0, 1]) RGB image (H, W, 3) as float32 CHW in [0, 1]."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image_rgb.shape}")
    img = image_rgb.astype(np.float32)
    if image_rgb.dtype == np.uint8:
        img /= 255.0
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0).transpose(2, 0, 1))

