"""Drawing predictions: the skeleton on the image, and heatmaps as a labelled grid."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .joints import EDGE_COLORS_RGB, MPII_JOINTS, MPII_SKELETON

__all__ = ["draw_skeleton", "heatmap_grid"]


def draw_skeleton(image_rgb: np.ndarray, joints: np.ndarray, skeleton=MPII_SKELETON,
                  colors=EDGE_COLORS_RGB) -> np.ndarray:
    """A copy of ``image_rgb`` (H, W, 3 uint8) with limbs and joints (K, 2; 0-based x, y) drawn."""
    out = np.ascontiguousarray(image_rgb.copy())
    size = max(out.shape[:2])
    width = max(2, int(round(size / 200)))
    pts = [(int(round(x)), int(round(y))) for x, y in np.asarray(joints, dtype=np.float64)]
    for (a, b), color in zip(skeleton, colors):
        cv2.line(out, pts[a], pts[b], color, width, cv2.LINE_AA)
    for p in pts:
        cv2.circle(out, p, width + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, p, width + 1, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def heatmap_grid(patch_rgb: np.ndarray, heatmaps: np.ndarray, names=MPII_JOINTS, tile: int = 128) -> np.ndarray:
    """A grid of the crop blended with each joint's heatmap (K, h, w), labelled; RGB uint8.

    Tiles are at least ``tile`` pixels wide (small crops are enlarged).
    """
    res = max(patch_rgb.shape[0], tile)
    patch_rgb = cv2.resize(patch_rgb, (res, res), interpolation=cv2.INTER_LINEAR)
    k = heatmaps.shape[0]
    cols = int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    grid = np.zeros((rows * res, cols * res, 3), dtype=np.uint8)
    base = patch_rgb.astype(np.float32) if patch_rgb.dtype == np.uint8 else patch_rgb.astype(np.float32) * 255
    for j in range(k):
        hm = cv2.resize(np.clip(heatmaps[j], 0, 1).astype(np.float32), (res, res), interpolation=cv2.INTER_LINEAR)
        color = cv2.applyColorMap((hm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        tile = (0.5 * base + 0.5 * color).astype(np.uint8)
        cv2.putText(tile, str(names[j]) if j < len(names) else str(j), (3, 14), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(j, cols)
        grid[r * res:(r + 1) * res, c * res:(c + 1) * res] = tile
    return grid
