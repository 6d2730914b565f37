"""``shg-fast predict``: joints on photos, drawn as a skeleton, and written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    from ..models import MODEL_KINDS

    p = sub.add_parser("predict", help="predict the joints of one person per image; PNG + JSON per image",
                       description="Crops each image around --center with --scale (default: the image "
                                   "centre, and a scale that fits the whole image), runs the model, "
                                   "decodes the joints to image coordinates, and writes IMAGE_pose.png "
                                   "(skeleton drawn) and IMAGE.json into --out.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything OpenCV reads)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--center", nargs=2, type=float, metavar=("X", "Y"), help="person centre, 0-based pixels")
    p.add_argument("--scale", type=float, help="person scale: crop side / 200 px")
    p.add_argument("--checkpoint", help="checkpoint (.pt); default: the shipped synthetic-data model")
    p.add_argument("--model", choices=MODEL_KINDS, default="fast", help="implementation (default fast)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored image")
    p.add_argument("--heatmaps", action="store_true", help="also write IMAGE_heatmaps.png (a grid)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def _load_model(args):
    import torch

    from ..models import SHIPPED_CHECKPOINT, model_from_checkpoint

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

    from ..data.mpii import read_image_rgb
    from ..pose import drawing
    from ..pose.decode import predict_joints
    from ..pose.joints import MPII_JOINTS
    from ..pose.transforms import SCALE_UNIT, crop, to_input

    if args.scale is not None and not args.scale > 0:
        raise CLIError(f"--scale must be positive, got {args.scale}")
    images = []
    for name in args.images:
        try:
            images.append((Path(name), read_image_rgb(name)))
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(str(exc)) from exc
    model, ckpt, ckpt_path, device = _load_model(args)
    res = int(ckpt["config"].get("res", 256))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create --out {out}: {exc}") from exc
    for path, image in images:
        h, w = image.shape[:2]
        center = np.array(args.center if args.center else ((w - 1) / 2, (h - 1) / 2))
        scale = args.scale if args.scale else max(h, w) / SCALE_UNIT
        patch = crop(image, center, scale, 0.0, res)
        x = torch.from_numpy(to_input(patch))[None].to(device)
        coords, maxvals, heatmaps = predict_joints(model, x, center, scale, flip=args.flip, convention="float")
        joints = coords[0]
        result = {
            "image": str(path), "width": w, "height": h,
            "center": center.tolist(), "scale": scale, "flip": args.flip,
            "checkpoint": str(ckpt_path), "model": args.model,
            "coordinates": "0-based image pixels (x right, y down)",
            "joints": {name: {"x": float(joints[k, 0]), "y": float(joints[k, 1]), "score": float(maxvals[0, k])}
                       for k, name in enumerate(MPII_JOINTS)},
        }
        stem = out / path.stem
        _write_png(stem.with_name(stem.name + "_pose.png"), drawing.draw_skeleton(image, joints))
        if args.heatmaps:
            grid = drawing.heatmap_grid(patch, heatmaps[0].float().cpu().numpy())
            _write_png(stem.with_name(stem.name + "_heatmaps.png"), grid)
        stem.with_name(stem.name + ".json").write_text(json.dumps(result, indent=1))
        print(f"{path}: wrote {stem}_pose.png and {stem.name}.json")
    return 0


def _write_png(path: Path, rgb) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise CLIError(f"cannot write {path}")
