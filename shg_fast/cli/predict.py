"""``shg-fast predict``: joints on photos, drawn as a skeleton, and written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import _args
from ._args import CLIError

#: Bounds of --scale (crop side / 200 px: 1 px to 200,000 px) and of the --center coordinates.
SCALE_RANGE = (0.005, 1000.0)
MAX_PIXELS = 1e6


def add_parser(sub) -> argparse.ArgumentParser:
    from ..checkpoints import MODEL_KINDS
    from ..pose.transforms import CROP_METHODS

    p = sub.add_parser("predict", help="predict the joints of one person per image; PNG + JSON per image",
                       description="Crops each image around --center with --scale (default: the image "
                                   "centre (W/2, H/2), and a scale that fits the whole image), runs the model, "
                                   "decodes the joints to image coordinates, and writes IMAGE_pose.png "
                                   "(skeleton drawn) and IMAGE.json into --out.")
    p.add_argument("images", nargs="+", metavar="IMAGE", type=_args.input_file,
                   help="image files (anything OpenCV reads)")
    p.add_argument("--out", required=True, type=_args.output_dir, help="output folder (created if missing)")
    p.add_argument("--center", nargs=2, type=_args.float_in(-MAX_PIXELS, MAX_PIXELS), metavar=("X", "Y"),
                   help="person centre in the crop transform's coordinates, where (W/2, H/2) is the centre of a "
                        f"W x H image (the default; each within +-{MAX_PIXELS:g})")
    p.add_argument("--scale", type=_args.float_in(*SCALE_RANGE),
                   help=f"person scale: crop side / 200 px, in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}]")
    p.add_argument("--crop", choices=CROP_METHODS, default="original",
                   help="original: the original code's whole-pixel crop and Torch7 rescale (default; what "
                        "models trained by the original code saw); warp: one affine warp (faster; how the "
                        "synthetic data, and so the shipped model, are cropped)")
    p.add_argument("--checkpoint", type=_args.checkpoint_file,
                   help="checkpoint (.pt); default: the shipped synthetic-data model")
    p.add_argument("--model", choices=MODEL_KINDS, default="fast", help="implementation (default fast)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored image")
    p.add_argument("--heatmaps", action="store_true", help="also write IMAGE_heatmaps.png (a grid)")
    p.add_argument("--device", type=_args.device, default=None, help="cpu or cuda (default: cuda when available)")
    return p


def check(args: argparse.Namespace) -> None:
    """The device is present, and every image can be decoded (read here, before the model loads)."""
    from ..data.mpii import read_image_rgb

    _args.check_device(args.device)
    args.loaded = []
    for name in args.images:
        try:
            args.loaded.append((Path(name), read_image_rgb(name)))
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(str(exc)) from None


def _load_model(args):
    import torch

    from ..checkpoints import SHIPPED_CHECKPOINT, model_from_checkpoint

    path = Path(args.checkpoint) if args.checkpoint else SHIPPED_CHECKPOINT
    try:
        model, ckpt = model_from_checkpoint(path, args.model)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from exc
    except RuntimeError as exc:  # load_state_dict: the weights do not fit the configuration
        raise CLIError(f"checkpoint {path} does not fit the model: {str(exc).splitlines()[0]}") from exc
    what = ckpt.get("description") or json.dumps(ckpt["config"])
    print(f"checkpoint {path}{' (shipped)' if not args.checkpoint else ''}: {what}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(device), ckpt, path, device


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..pose import drawing
    from ..pose.decode import predict_joints
    from ..pose.joints import MPII_JOINTS
    from ..pose.transforms import SCALE_UNIT, crop, to_input

    model, ckpt, ckpt_path, device = _load_model(args)
    res = int(ckpt["config"].get("res", 256))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, image in args.loaded:
        h, w = image.shape[:2]
        center = np.array(args.center if args.center else (w / 2, h / 2))  # the transform's identity centre
        scale = args.scale if args.scale else max(h, w) / SCALE_UNIT
        patch = crop(image, center, scale, 0.0, res, method=args.crop)
        x = torch.from_numpy(to_input(patch))[None].to(device)
        coords, maxvals, heatmaps = predict_joints(model, x, center, scale, flip=args.flip, convention="float")
        joints = coords[0]
        result = {
            "image": str(path), "width": w, "height": h,
            "center": center.tolist(), "scale": scale, "crop": args.crop, "flip": args.flip,
            "checkpoint": str(ckpt_path), "model": args.model,
            "coordinates": "image pixels, x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1)",
            "joints": {name: {"x": float(joints[k, 0]), "y": float(joints[k, 1]), "score": float(maxvals[0, k])}
                       for k, name in enumerate(MPII_JOINTS)},
        }
        stem = out / path.stem
        _write_png(stem.with_name(stem.name + "_pose.png"), drawing.draw_skeleton(image, joints))
        if args.heatmaps:
            grid = drawing.heatmap_grid(patch, heatmaps[0].float().cpu().numpy())
            _write_png(stem.with_name(stem.name + "_heatmaps.png"), grid)
        _args.write_text(stem.with_name(stem.name + ".json"), json.dumps(result, indent=1))
        print(f"{path}: wrote {stem}_pose.png and {stem.name}.json")
    return 0


def _write_png(path: Path, rgb) -> None:
    import cv2

    with _args.atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise CLIError(f"cannot write {path} (OpenCV's imwrite failed)", status=1)
