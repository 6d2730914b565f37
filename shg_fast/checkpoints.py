"""Model construction and checkpoints: the one place that chooses the model class.

``build_model(kind="fast" | "reference", **cfg)`` returns ``shg_fast.StackedHourglass`` (the
fused model) or :class:`shg_fast.reference.StackedHourglass`; both share the constructor and the
state_dict, so a checkpoint trained with one loads into the other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from . import _atomic

__all__ = ["MODEL_KINDS", "DEFAULT_CONFIG", "SHIPPED_CHECKPOINT", "model_class", "build_model", "save_checkpoint",
           "save_checkpoint_dict", "load_checkpoint", "model_from_checkpoint", "export_checkpoint"]

MODEL_KINDS = ("fast", "reference")

#: The paper's configuration: the model's constructor arguments (a checkpoint's ``config`` holds
#: these, and may hold other entries such as the training options).
DEFAULT_CONFIG = {"num_stacks": 8, "num_features": 256, "num_joints": 16, "num_modules": 1,
                  "stem": "torch7", "input_mean": None}

#: The small checkpoint shipped with the package (trained on synthetic stick figures).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "synthetic_small.pt"


def model_class(kind: str = "fast") -> type[nn.Module]:
    """The model class for ``kind``: ``"fast"`` (shg_fast.StackedHourglass) or ``"reference"``."""
    if kind == "reference":
        from .reference import StackedHourglass
        return StackedHourglass
    if kind == "fast":
        from .model import StackedHourglass
        return StackedHourglass
    raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")


def build_model(kind: str = "fast", **cfg) -> nn.Module:
    """Build a Stacked Hourglass of ``kind`` with ``cfg`` over :data:`DEFAULT_CONFIG`."""
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown model options {sorted(unknown)}; expected some of {sorted(DEFAULT_CONFIG)}")
    return model_class(kind)(**{**DEFAULT_CONFIG, **cfg})


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict, **extra) -> None:
    """Save ``{"model": state_dict, "config": config, **extra}`` atomically (write, then rename)."""
    save_checkpoint_dict(path, {"model": model.state_dict(), "config": dict(config), **extra})


def save_checkpoint_dict(path: str | os.PathLike, checkpoint: dict) -> None:
    """``torch.save(checkpoint, path)`` atomically (:func:`shg_fast._atomic.atomic_path`), so an
    interrupted write never leaves a truncated checkpoint. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict (CPU tensors); ValueError when the file is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a shg_fast checkpoint (expected keys 'model' and 'config'); "
                         f"if it comes from another port, convert it first: shg-fast convert {path} OUT.pt")
    return ckpt


def model_from_checkpoint(path: str | os.PathLike, kind: str = "fast") -> tuple[nn.Module, dict]:
    """The eval-mode model stored in ``path``, built as ``kind``, and the checkpoint dict."""
    ckpt = load_checkpoint(path)
    model_cfg = {k: v for k, v in ckpt["config"].items() if k in DEFAULT_CONFIG}
    model = build_model(kind, **model_cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, description: str) -> dict:
    """Write the model weights and config of training checkpoint ``src`` (no optimizer) to ``dst``,
    and its info as JSON next to it (``dst`` with suffix ``.json``).

    Returns the info stored with it: ``description``, the config, the epoch and the last
    validation figures of the training history.
    """
    ckpt = load_checkpoint(src)
    history = ckpt.get("history", {})
    last_val = history.get("val", [{}])[-1] if history.get("val") else {}
    info = {"description": description, "config": ckpt["config"], "epoch": ckpt.get("epoch"),
            "steps": len(history.get("loss", [])), "val_pckh_all": last_val.get("total_all16"),
            "val_pckh_14_weighted": last_val.get("total_weighted")}
    path = Path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ckpt["model"], "config": ckpt["config"], "description": description, "info": info}, path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info
