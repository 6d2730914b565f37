"""Synthetic pose data: stick figures with the 16 MPII joints drawn with OpenCV on textured
backgrounds, for smoke training, demos and tests.

Every sample is a pure function of ``(seed, index)``, so a dataset is reproducible and two
datasets with different seeds are disjoint held-out sets. Right limbs are drawn in warm colours
and left limbs in cool ones, so left and right can be told apart from the image alone.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..pose.joints import LIMB_SIDES, MPII_JOINTS, MPII_SKELETON
from ..pose.targets import render_heatmaps
from ..pose.transforms import SCALE_UNIT, crop, to_input, transform_points

__all__ = ["draw_stick_figure", "SyntheticPoses"]

NUM_JOINTS = len(MPII_JOINTS)
#: Limb thickness and head radius in body units (torso length = 1).
LIMB_WIDTH = 0.14
HEAD_RADIUS = 0.24


def _rot(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.sin(a), math.cos(a)])  # 0 deg points down (+y), 90 deg points +x


def _pose(rng: np.random.Generator) -> np.ndarray:
    """Joint positions (16, 2) in body units, pelvis at the origin, y down, facing the viewer."""
    j = np.zeros((NUM_JOINTS, 2))
    lean = rng.uniform(-20, 20)
    up = -_rot(lean)
    side = np.array([-up[1], up[0]])  # perpendicular to the torso, towards image +x when upright
    j[6] = 0.0
    j[7] = j[6] + up * 1.0
    j[8] = j[7] + up * 0.22
    j[9] = j[8] + up * 0.5
    j[2], j[3] = j[6] - side * 0.22, j[6] + side * 0.22  # right hip on image left
    j[12], j[13] = j[7] - side * 0.38, j[7] + side * 0.38
    for hip, knee, ankle, sign in ((2, 1, 0, -1), (3, 4, 5, 1)):
        thigh = rng.uniform(-35, 60) * sign
        j[knee] = j[hip] + _rot(thigh + lean) * 0.75
        j[ankle] = j[knee] + _rot(thigh + lean + rng.uniform(-70, 10) * sign) * 0.7
    for sho, elb, wri, sign in ((12, 11, 10, -1), (13, 14, 15, 1)):
        upper = rng.uniform(-30, 170) * sign
        j[elb] = j[sho] + _rot(upper + lean) * 0.55
        j[wri] = j[elb] + _rot(upper + lean + rng.uniform(-150, 150)) * 0.5
    return j


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    grid = rng.integers(0, 256, size=(rng.integers(3, 10),) * 2 + (3,), dtype=np.uint8)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    noise = rng.standard_normal(size=img.shape, dtype=np.float32) * rng.uniform(4, 20)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 8)):  # clutter: lines and blobs in neutral colours
        color = tuple(int(v) for v in rng.integers(0, 256) * np.ones(3))
        p, q = rng.integers(0, size, size=(2, 2))
        if rng.random() < 0.5:
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), color, int(rng.integers(1, 4)))
        else:
            cv2.circle(img, tuple(int(v) for v in p), int(rng.integers(2, size // 8 + 3)), color, -1)
    return img


def draw_stick_figure(rng: np.random.Generator, size: int) -> dict:
    """A ``size x size`` RGB uint8 image with one stick figure, and its annotation.

    Returns a dict with ``image``, ``joints`` (16, 2) float 0-based pixel coordinates,
    ``center`` (2,), ``scale`` (box side / 200 px, box = 1.25 x the figure's extent) and
    ``normalize`` (0.6 x the head box diagonal, the PCKh unit), as in MPII.
    """
    body = _pose(rng)
    extent = (body.max(0) - body.min(0)).max() + 2 * HEAD_RADIUS
    unit = size * rng.uniform(0.45, 0.8) / extent
    mid = (body.max(0) + body.min(0)) / 2
    offset = rng.uniform(-0.1, 0.1, size=2) * size
    joints = (body - mid) * unit + size / 2 + offset
    img = _background(rng, size)
    width = max(1, int(round(LIMB_WIDTH * unit)))
    jitter = rng.uniform(0.7, 1.0)
    for (a, b), side in zip(MPII_SKELETON, LIMB_SIDES):
        color = tuple(int(c * jitter) for c in SIDE_COLORS[side])
        cv2.line(img, _px(joints[a]), _px(joints[b]), color, width, cv2.LINE_AA)
    head_centre = (joints[8] + joints[9]) / 2
    cv2.circle(img, _px(head_centre), max(2, int(round(HEAD_RADIUS * unit))), (240, 200, 150), -1, cv2.LINE_AA)
    for k in range(NUM_JOINTS):
        cv2.circle(img, _px(joints[k]), max(1, width // 2 + 1), (250, 250, 250), -1, cv2.LINE_AA)
    head_side = 2 * HEAD_RADIUS * unit
    return {
        "image": img,
        "joints": joints,
        "center": (joints.max(0) + joints.min(0)) / 2,
        "scale": extent * unit * 1.25 / SCALE_UNIT,
        "normalize": 0.6 * head_side * math.sqrt(2),
    }


def _px(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


#: Stick-figure limb colours (RGB): right warm, left cool, centre green.
SIDE_COLORS = {"right": (255, 140, 0), "left": (0, 170, 255), "centre": (40, 220, 40)}


class SyntheticPoses(Dataset):
    """Stick-figure poses, cropped like MPII people.

    Args:
        length: number of samples.
        res: network input side (a multiple of 64).
        out_res: heatmap side (default ``res // 4``).
        sigma: target Gaussian sigma in heatmap pixels, or ``"torch7"``.
        seed: dataset seed; sample ``i`` depends only on ``(seed, i)``.
        augment: random rotation (+-30 deg) and scale (0.75-1.25) of the crop.

    An item is a dict: ``input`` (3, res, res) float32 RGB in [0, 1], ``target`` (16, out, out),
    ``joints`` (16, 2) 0-based image coordinates, ``visible`` (16,), ``center``, ``scale``,
    ``rot`` (the crop's parameters), ``normalize`` (PCKh unit), ``index``.
    """

    #: Coordinates of ``joints``: float 0-based (see :func:`shg_fast.pose.decode.heatmaps_to_image`).
    convention = "float"

    def __init__(self, length: int, res: int = 128, out_res: int | None = None,
                 sigma: float | str = 1.0, seed: int = 0, augment: bool = False):
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if res % 64:
            raise ValueError(f"res must be a multiple of 64, got {res}")
        self.length, self.res, self.seed, self.augment = length, res, seed, augment
        self.out_res = out_res or res // 4
        self.sigma = sigma

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, index])
        fig = draw_stick_figure(rng, int(self.res * 1.25))
        rot = rng.uniform(-30, 30) if self.augment else 0.0
        scale = fig["scale"] * (rng.uniform(0.75, 1.25) if self.augment else 1.0)
        # The warp, not the original's crop: the targets come from the exact float transform, which
        # the warp follows to the pixel (the original's whole-pixel box does not), it is much faster
        # for on-the-fly data, and the shipped model was trained on it.
        image = crop(fig["image"], fig["center"], scale, rot, self.res, method="warp")
        hm_joints = transform_points(fig["joints"], fig["center"], scale, rot, self.out_res)
        visible = np.ones(NUM_JOINTS, dtype=bool)
        target = render_heatmaps(hm_joints, visible, (self.out_res, self.out_res), self.sigma)
        return {
            "input": torch.from_numpy(to_input(image)),
            "target": torch.from_numpy(target),
            "joints": torch.from_numpy(fig["joints"]),
            "visible": torch.from_numpy(visible),
            "center": torch.from_numpy(np.asarray(fig["center"], dtype=np.float64)),
            "scale": torch.tensor(scale, dtype=torch.float64),
            "rot": torch.tensor(rot, dtype=torch.float64),
            "normalize": torch.tensor(fig["normalize"], dtype=torch.float64),
            "index": index,
        }
