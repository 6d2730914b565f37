"""The model variants a benchmark compares, built from one reference model.

``reference``
    :class:`shg_fast.reference.StackedHourglass` in eager PyTorch.
``fast``
    ``shg_fast.StackedHourglass`` (fused plan in eval mode) with the reference's weights.
``compile``
    ``torch.compile`` of the reference: mode ``max-autotune`` on a GPU, the default mode on a CPU.
``cuda_graph``
    ``shg_fast.cuda_graph(fast_model, example)``: the fast model captured in a CUDA graph
    (a plain callable on a CPU).

"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .cuda_graph import cuda_graph
from .model import StackedHourglass as FastStackedHourglass

__all__ = ["VARIANTS", "build_variant", "compile_mode"]

VARIANTS = ("reference", "fast", "compile", "cuda_graph")

Forward = Callable[[torch.Tensor], list]


def compile_mode(device: torch.device) -> str | None:
    """The torch.compile mode used for ``device``: ``max-autotune`` on CUDA, default elsewhere."""
    return "max-autotune" if device.type == "cuda" else None


def _fast_model(reference: nn.Module, example: torch.Tensor) -> nn.Module:
    model = FastStackedHourglass(**reference.config)
    model.load_state_dict(reference.state_dict())
    return model.to(device=example.device, dtype=example.dtype).eval()


def build_variant(name: str, reference: nn.Module, example: torch.Tensor) -> Forward:
    """A callable ``x -> list of heatmaps`` for variant ``name``.

    Args:
        name: one of :data:`VARIANTS`.
        reference: the eval-mode reference model on ``example``'s device and dtype.
        example: an input of the shape, dtype and device the callable will be run on (CUDA
            graphs are captured for exactly this shape).
    """
    if name == "reference":
        return reference
    if name == "fast":
        return _fast_model(reference, example)
    if name == "compile":
        torch._dynamo.reset()  # each (batch, dtype) gets a fresh compile, never a cache-limit fallback
        return torch.compile(reference, mode=compile_mode(example.device), dynamic=False)
    if name == "cuda_graph":
        return cuda_graph(_fast_model(reference, example), example)
    raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
