"""Nearest-neighbour 2x upsample plus skip-add: ``out = skip + low[n, c, h // 2, w // 2]``.

The hourglass's ``up1 + upsample_nearest_2x(low3)`` in one pass. ``low`` has the spatial
size ``ceil(H / 2) x ceil(W / 2)`` of ``skip``'s ``H x W`` (exactly half for the network).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import _extension
from ..backends import FusedOp, common_device, dtype_check

__all__ = ["upsample_add", "upsample_add_reference", "UPSAMPLE_ADD", "check_upsample_add"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_upsample_add(low: torch.Tensor, skip: torch.Tensor) -> None:
    """Raise TypeError/ValueError unless ``(low, skip)`` meet the op's contract."""
    for name, t in (("low", low), ("skip", skip)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"upsample_add: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"upsample_add: {name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"upsample_add: {name} dtype must be one of {SUPPORTED_DTYPES}, got {t.dtype}")
    if low.dtype != skip.dtype:
        raise TypeError(f"upsample_add: low and skip must share a dtype, got {low.dtype} and {skip.dtype}")
    n, c, h, w = skip.shape
    expected = (n, c, (h + 1) // 2, (w + 1) // 2)
    if tuple(low.shape) != expected:
        raise ValueError(
            f"upsample_add: low must have shape {expected} for skip of shape {tuple(skip.shape)}, "
            f"got {tuple(low.shape)}"
        )
    common_device("upsample_add", (low, skip))


def upsample_add_reference(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch twin: ``skip + low`` repeated 2x in each spatial axis and cropped to skip."""
    h, w = skip.shape[-2:]
    up = low.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    return skip + up


def _upsample_add_backward_low(grad: torch.Tensor, low_shape: torch.Size) -> torch.Tensor:
    """Gradient w.r.t. ``low``: the sum of ``grad`` over each 2x2 block (zero-padded at odd edges).

    Even maps (the network's) take ATen's nearest-upsample backward, whose source index floor(dst / 2)
    is exactly this 2x2 block (several times faster on the CPU than the reshape-and-sum below)."""
    h, w = grad.shape[-2:]
    if (h, w) == (2 * low_shape[-2], 2 * low_shape[-1]):
        return torch.ops.aten.upsample_nearest2d_backward(grad, [h, w], list(low_shape), None, None)
    padded = F.pad(grad, (0, 2 * low_shape[-1] - w, 0, 2 * low_shape[-2] - h))
    n, c = grad.shape[:2]
    return padded.reshape(n, c, low_shape[-2], 2, low_shape[-1], 2).sum(dim=(3, 5))


def upsample_add_setup_context(ctx, inputs, output):
    """Autograd context of every upsample_add library op: the shape of ``low``."""
    ctx.low_shape = inputs[0].shape


def upsample_add_backward(ctx, grad):
    """Backward of every upsample_add library op: ``(grad_low, grad_skip)``."""
    return _upsample_add_backward_low(grad, ctx.low_shape), grad


def _register_library_op() -> None:
    """Fake kernel and autograd for the extension's ``shg_fast::upsample_add``."""

    @torch.library.register_fake("shg_fast::upsample_add")
    def _(low, skip):
        torch._check(low.dim() == 4 and skip.dim() == 4, lambda: "upsample_add needs 4-D tensors")
        torch._check(low.dtype == skip.dtype, lambda: "upsample_add needs matching dtypes")
        return torch.empty_like(skip)

    torch.library.register_autograd("shg_fast::upsample_add", upsample_add_backward,
                                    setup_context=upsample_add_setup_context)


UPSAMPLE_ADD = FusedOp("upsample_add")
UPSAMPLE_ADD.register("reference", upsample_add_reference)
if _extension.load()[0] is not None:
    _register_library_op()
    _check_ext_dtype = dtype_check("upsample_add", SUPPORTED_DTYPES)
    UPSAMPLE_ADD.register("cpu", torch.ops.shg_fast.upsample_add, _check_ext_dtype)
    UPSAMPLE_ADD.register("cuda", torch.ops.shg_fast.upsample_add, _check_ext_dtype)


def upsample_add(low: torch.Tensor, skip: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``skip + nearest_upsample_2x(low)`` cropped to ``skip``'s size, in one pass.

    Args:
        low: ``(N, C, ceil(H/2), ceil(W/2))`` lower-resolution branch.
        skip: ``(N, C, H, W)`` skip branch; the output has its shape, dtype and memory format.
        backend: ``'auto'``, ``'reference'``, ``'cpu'``, ``'triton'`` or ``'cuda'``; default
            ``$SHG_FAST_BACKEND`` or ``'auto'`` (see :mod:`shg_fast.backends`).

    Differentiable in both arguments. Supports float32, float64, float16 and bfloat16.
    """
    check_upsample_add(low, skip)
    return UPSAMPLE_ADD.run(skip.device, backend, low, skip)
