"""Argument checks shared by the C++ CPU-only ops (:mod:`.winograd`, :mod:`.conv1x1`)."""

from __future__ import annotations

import torch

from .. import _extension
from ..backends import BackendUnavailableError


def check_cpu_tensor(op: str, name: str, t, dim: int, dtypes: tuple[torch.dtype, ...]) -> None:
    """Raise TypeError/ValueError unless ``t`` is a ``dim``-D CPU tensor of one of ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} dtype must be one of {dtypes}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{op}: {name} must be a CPU tensor, got device {t.device}")


def require_cpu_kernel(op: str, available: bool) -> None:
    """Raise BackendUnavailableError, with the extension's load error, unless the kernel of ``op`` is ``available``."""
    if not available:
        reason = _extension.load()[1] or f"the loaded extension has no shg_fast::{op} (rebuild it)"
        raise BackendUnavailableError(f"{op}: {reason}")
