"""From network heatmaps to joint coordinates in the original image.

:func:`heatmaps_to_image` applies the original code's convention to 0-based heatmap coordinates
``c`` (from :func:`shg_fast.ops.decode_heatmaps`): ``q = c + 0.5`` (the centre of the heatmap
pixel), the inverse crop transform, then either truncation and ``+ 1`` (1-based integer MPII
coordinates, ``convention="mpii"``; the truncation carries the original's ``+1e-4`` nudge) or
the float coordinates before that truncation (``convention="float"``). Those are the crop
transform's own continuous coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so its
centre is ``(i + 0.5, j + 0.5)`` and a W x H image's centre is ``(W/2, H/2)`` (the default centre
of ``shg-fast predict``); truncating them gives the 0-based pixel, as the original's ``+ 1`` does
the 1-based one.

:func:`predict_joints` runs a model on cropped inputs and does all of it, with the optional
flip test (mirrored input, heatmaps mirrored back and left/right joints swapped, averaged).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..ops import decode_heatmaps
from .joints import MPII_FLIP_PAIRS
from .transforms import transform_points, transform_points_original

__all__ = ["CONVENTIONS", "heatmaps_to_image", "predict_joints"]

CONVENTIONS = ("mpii", "float")


def _per_sample(values, n: int, name: str, width: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    shape = (n,) if width is None else (n, width)
    if arr.shape == shape[1:] or (width is None and arr.ndim == 0):
        arr = np.broadcast_to(arr, shape)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one per sample), got {arr.shape}")
    return arr


def heatmaps_to_image(coords, center, scale, res: int, rot=0.0, convention: str = "mpii") -> np.ndarray:
    """Map 0-based heatmap coordinates ``(N, K, 2)`` back to the image.

    Args:
        coords: ``(N, K, 2)`` heatmap ``(x, y)``, e.g. from ``decode_heatmaps``.
        center, scale, rot: the crop of each sample (``(N, 2)``, ``(N,)``, ``(N,)`` or one for all).
        res: the heatmap side (the crop transform is evaluated at the heatmap resolution).
        convention: ``"mpii"`` → int64 1-based coordinates as the original; ``"float"`` →
            float64 continuous coordinates (pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if isinstance(coords, torch.Tensor):
        coords = coords.detach().cpu().double().numpy()
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 3 or c.shape[2] != 2:
        raise ValueError(f"coords must have shape (N, K, 2), got {c.shape}")
    n = c.shape[0]
    centers = _per_sample(center, n, "center", 2)
    scales, rots = _per_sample(scale, n, "scale"), _per_sample(rot, n, "rot")
    q = c + 0.5
    if convention == "mpii":
        return np.stack([transform_points_original(q[i] + 1, centers[i], scales[i], rots[i], res, invert=True)
                         for i in range(n)])
    return np.stack([transform_points(q[i], centers[i], scales[i], rots[i], res, invert=True)
                     for i in range(n)])


@torch.no_grad()
def predict_joints(model: nn.Module, inputs: torch.Tensor, center, scale, rot=0.0, flip: bool = False,
                   convention: str = "mpii", flip_pairs=MPII_FLIP_PAIRS):
    """Run ``model`` on cropped ``inputs`` (N, 3, H, W) and decode joints in image coordinates.

    Returns ``(coords, maxvals, heatmaps)``: coords as :func:`heatmaps_to_image`, maxvals
    ``(N, K)`` numpy, and the final stack's heatmaps (flip-averaged maps are not returned; these
    are the unmirrored ones).
    """
    heatmaps = model(inputs)[-1]
    flipped = model(inputs.flip(-1))[-1] if flip else None
    hm_coords, maxvals = decode_heatmaps(heatmaps, flipped, flip_pairs)
    coords = heatmaps_to_image(hm_coords, center, scale, heatmaps.shape[-1], rot, convention)
    return coords, maxvals.cpu().numpy(), heatmaps
