"""MPII people from an annotation .h5 (the original code's layout) and a folder of images.

The .h5 has ``part`` (N, 16, 2) 1-based image coordinates (``x <= 0``: not annotated),
``center`` (N, 2), ``scale`` (N,) and ``normalize`` (N,); image names come from its ``imgname``
dataset or from a text file with one name per row. As in the original code, the crop centre is
moved down by ``15 * scale`` px and the scale enlarged by 1.25 before cropping, the annotation's
(1-based) centre goes into the transform as it is, and the crop is the original's
(:func:`shg_fast.pose.transforms.crop` with ``method="original"``).

Augmentation (the paper's): rotation uniform in +-30 degrees, scale factor uniform in 0.75-1.25,
horizontal flip with left/right joints swapped (probability 0.5), and colour jitter (each RGB
channel multiplied by a factor uniform in 0.8-1.2).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..pose.joints import MPII_FLIP_PERM, MPII_JOINTS
from ..pose.pckh import read_h5
from ..pose.targets import render_heatmaps
from ..pose.transforms import crop, to_input, transform_points

__all__ = ["MPIIDataset", "TruncatedImageWarning", "jpeg_is_truncated", "read_image_rgb", "augment_params",
           "flip_crop"]

REQUIRED_KEYS = ("part", "center", "scale", "normalize")
ROTATION, SCALE_RANGE, COLOR_RANGE = 30.0, (0.75, 1.25), (0.8, 1.2)


class TruncatedImageWarning(UserWarning):
    """An image file ends early: OpenCV decodes what is there and fills the rest with grey."""


def jpeg_is_truncated(path: str | os.PathLike) -> bool:
    """True for a JPEG file (starting with the SOI marker) that does not end with the EOI marker
    ``FF D9`` (trailing zero or blank padding allowed): the file was cut short."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        return not f.read().rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3).

    FileNotFoundError when ``path`` is missing, ValueError when it is a folder or not an image
    OpenCV can decode; a :class:`TruncatedImageWarning` for a JPEG cut short (OpenCV fills the
    missing part with grey).
    """
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path} (not an image OpenCV can decode)")
    if jpeg_is_truncated(path):
        warnings.warn(f"{path}: the JPEG data ends early (truncated file?); the missing part is filled with grey",
                      TruncatedImageWarning, stacklevel=2)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def augment_params(rng: np.random.Generator) -> dict:
    """Random rotation (deg), scale factor, flip and per-channel colour factors."""
    return {
        "rot": float(rng.uniform(-ROTATION, ROTATION)),
        "scale": float(rng.uniform(*SCALE_RANGE)),
        "flip": bool(rng.random() < 0.5),
        "color": rng.uniform(*COLOR_RANGE, size=3).astype(np.float32),
    }


def flip_crop(x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a cropped input ``(3, H, W)`` and its targets ``(16, h, w)``, swapping left and right joints.

    The original flips after cropping (``flip`` and ``shuffleLR`` in its ``generateSample``): the
    whole-pixel crop box of a mirrored image is not the mirror of the box, so flipping the image
    first would crop a slightly different patch.
    """
    return np.ascontiguousarray(x[:, :, ::-1]), np.ascontiguousarray(target[list(MPII_FLIP_PERM), :, ::-1])


class MPIIDataset(Dataset):
    """MPII people cropped to the network input, with Gaussian targets.

    Args:
        annot: the annotation .h5.
        image_dir: folder holding the images.
        image_list: optional text file, one image name per annotation row (else ``imgname``).
        res: input side; ``out_res`` the heatmap side (default ``res // 4``).
        sigma: target sigma (heatmap pixels) or ``"torch7"``.
        augment: apply the paper's augmentation (random per call, from ``seed`` and the index).

    An item is a dict like :class:`shg_fast.data.synthetic.SyntheticPoses`'s; ``joints`` are the
    1-based MPII annotations (unaugmented), ``center``/``scale``/``rot`` the crop actually used
    (so decoding with ``convention="mpii"`` gives comparable coordinates for unflipped samples).
    """

    #: Coordinates of ``joints``: 1-based MPII (see :func:`shg_fast.pose.decode.heatmaps_to_image`).
    convention = "mpii"

    def __init__(self, annot: str | os.PathLike, image_dir: str | os.PathLike, image_list=None,
                 res: int = 256, out_res: int | None = None, sigma: float | str = 1.0,
                 augment: bool = False, seed: int = 0):
        ann = read_h5(annot, REQUIRED_KEYS + (() if image_list else ("imgname",)))
        self.part = ann["part"].astype(np.float64)
        n = self.part.shape[0]
        if self.part.shape[1:] != (len(MPII_JOINTS), 2):
            raise ValueError(f"{annot}: 'part' must have shape (N, 16, 2), got {self.part.shape}")
        self.center = ann["center"].astype(np.float64).reshape(n, 2)
        self.scale = ann["scale"].astype(np.float64).reshape(n)
        self.normalize = ann["normalize"].astype(np.float64).reshape(n)
        if image_list:
            names = Path(image_list).read_text().split()
        else:
            names = [v.decode() if isinstance(v, bytes) else str(v) for v in ann["imgname"]]
        if len(names) != n:
            raise ValueError(f"{len(names)} image names for {n} annotations")
        self.names, self.image_dir = names, Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        if res % 64:
            raise ValueError(f"res must be a multiple of 64, got {res}")
        self.res, self.out_res, self.sigma = res, out_res or res // 4, sigma
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        """Draw different augmentations in each epoch (called by the training loop)."""
        self.epoch = epoch

    def crop_params(self, index: int) -> tuple[np.ndarray, float]:
        """The original's crop centre and scale for row ``index`` (centre down 15 s, scale x 1.25)."""
        c, s = self.center[index].copy(), self.scale[index]
        if c[0] > 0:
            c[1] += 15 * s
            s *= 1.25
        return c, s

    def __getitem__(self, index: int) -> dict:
        image = read_image_rgb(self.image_dir / self.names[index])
        center, scale = self.crop_params(index)
        joints0 = self.part[index] - 1
        visible = self.part[index, :, 0] > 0
        rot, aug = 0.0, None
        if self.augment:
            aug = augment_params(np.random.default_rng([self.seed, self.epoch, index]))
            rot, scale = aug["rot"], scale * aug["scale"]
        x = to_input(crop(image, center, scale, rot, self.res, method="original"))
        hm = transform_points(joints0, center, scale, rot, self.out_res)
        target = render_heatmaps(hm, visible, (self.out_res, self.out_res), self.sigma)
        if aug is not None:
            if aug["flip"]:
                x, target = flip_crop(x, target)
            x = np.clip(x * aug["color"][:, None, None], 0.0, 1.0)
        return {
            "input": torch.from_numpy(np.ascontiguousarray(x)),
            "target": torch.from_numpy(target),
            "joints": torch.from_numpy(self.part[index]),
            "visible": torch.from_numpy(self.part[index, :, 0] > 0),
            "center": torch.from_numpy(center),
            "scale": torch.tensor(scale, dtype=torch.float64),
            "rot": torch.tensor(rot, dtype=torch.float64),
            "normalize": torch.tensor(self.normalize[index], dtype=torch.float64),
            "index": index,
        }
