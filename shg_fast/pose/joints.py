"""The 16 MPII joints: names, left/right pairs, skeleton edges and drawing colours."""

from __future__ import annotations

from ..ops.decode_heatmaps import MPII_FLIP_PAIRS, flip_permutation

__all__ = [
    "MPII_JOINTS",
    "MPII_FLIP_PAIRS",
    "MPII_FLIP_PERM",
    "MPII_SKELETON",
    "PCKH_JOINTS",
    "EDGE_COLORS_RGB",
    "LIMB_SIDES",
]

#: MPII joint order (0-based index = position in this tuple).
MPII_JOINTS = (
    "rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thrx",
    "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri",
)

#: Joint permutation swapping left and right (an involution).
MPII_FLIP_PERM = tuple(flip_permutation(len(MPII_JOINTS), MPII_FLIP_PAIRS))

#: Limbs as (joint, joint) pairs: legs, torso and head, arms.
MPII_SKELETON = (
    (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5),
    (6, 7), (7, 8), (8, 9),
    (10, 11), (11, 12), (12, 7), (7, 13), (13, 14), (14, 15),
)

#: The 14 joints of the usual PCKh total: all but pelvis (6) and thorax (7).
PCKH_JOINTS = tuple(j for j in range(16) if j not in (6, 7))


def _limb_side(a: int, b: int) -> str:
    sides = {MPII_JOINTS[a][0], MPII_JOINTS[b][0]}
    return "right" if "r" in sides else "left" if "l" in sides else "centre"


#: Side of each limb of MPII_SKELETON: "right", "left" or "centre".
LIMB_SIDES = tuple(_limb_side(a, b) for a, b in MPII_SKELETON)

#: RGB colour per limb of MPII_SKELETON for drawing predictions: right red, left blue, centre green.
EDGE_COLORS_RGB = tuple({"right": (230, 60, 60), "left": (60, 90, 230), "centre": (60, 200, 60)}[side]
                        for side in LIMB_SIDES)
