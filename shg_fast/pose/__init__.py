"""The pose pipeline around the network: crop transforms, targets, decoding, PCKh, drawing.

Submodules: :mod:`.transforms` (the original's crop transform, its inverse and its whole-pixel crop), :mod:`.targets`
(Gaussian heatmaps), :mod:`.decode` (heatmaps → image coordinates, flip test), :mod:`.pckh`
(PCKh and the PCK curve), :mod:`.joints` (MPII joint names, pairs, skeleton), :mod:`.drawing`.
"""

from .decode import heatmaps_to_image, predict_joints
from .joints import MPII_FLIP_PAIRS, MPII_JOINTS, MPII_SKELETON
from .pckh import evaluate_files, pck, pck_curve
from .targets import render_heatmaps
from .transforms import crop, crop_matrix, transform_points, transform_points_original

__all__ = [
    "MPII_FLIP_PAIRS", "MPII_JOINTS", "MPII_SKELETON", "crop", "crop_matrix", "evaluate_files",
    "heatmaps_to_image", "pck", "pck_curve", "predict_joints", "render_heatmaps", "transform_points",
    "transform_points_original",
]
