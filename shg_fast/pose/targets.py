"""Training targets: one Gaussian heatmap per joint at the output resolution.

As in the original code, a joint at float heatmap position ``(x, y)`` (0-based) lands on pixel
``(floor(x), floor(y))`` and a Gaussian patch with peak 1 is centred there, clipped at the map
border. ``sigma`` is a number of heatmap pixels (patch radius ``ceil(3 sigma)``), or the name
``"torch7"``: the original's table, Torch's ``image.gaussian(7)`` (7x7, sigma 1.75 px), which the
original drew for its ``sigma = 1``. A joint that is not annotated, or whose pixel lies outside the
map, gets an all-zero map.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["gaussian_patch", "render_heatmaps", "TORCH7"]

#: Name of the original 7x7, sigma 1.75 table.
TORCH7 = "torch7"


def gaussian_patch(sigma: float | str = 1.0) -> np.ndarray:
    """The square float32 patch drawn for one joint (odd side, peak 1 at the centre)."""
    if sigma == TORCH7:
        radius, std = 3, 1.75
    elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0:
        radius, std = int(math.ceil(3 * sigma)), float(sigma)
    else:
        raise ValueError(f"sigma must be a positive number or {TORCH7!r}, got {sigma!r}")
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * std * std))
    return g.astype(np.float32)


def render_heatmaps(joints, visible, size: tuple[int, int], sigma: float | str = 1.0) -> np.ndarray:
    """Heatmaps ``(K, H, W)`` float32 for joints ``(K, 2)`` (0-based heatmap x, y).

    Args:
        joints: ``(K, 2)`` float positions in heatmap pixels.
        visible: ``(K,)`` truthy where the joint is annotated.
        size: ``(H, W)`` of the maps.
        sigma: Gaussian sigma in heatmap pixels, or ``"torch7"``.
    """
    pts = np.asarray(joints, dtype=np.float64)
    vis = np.asarray(visible).astype(bool).reshape(-1)
    if pts.ndim != 2 or pts.shape[1] != 2 or vis.shape != (pts.shape[0],):
        raise ValueError(f"joints must be (K, 2) and visible (K,), got {pts.shape} and {vis.shape}")
    h, w = size
    patch = gaussian_patch(sigma)
    r = patch.shape[0] // 2
    maps = np.zeros((pts.shape[0], h, w), dtype=np.float32)
    for k, (x, y) in enumerate(pts):
        if not vis[k] or not (np.isfinite(x) and np.isfinite(y)):
            continue
        cx, cy = int(math.floor(x)), int(math.floor(y))
        if not (0 <= cx < w and 0 <= cy < h):
            continue
        x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
        y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
        maps[k, y0:y1, x0:x1] = patch[y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r]
    return maps
