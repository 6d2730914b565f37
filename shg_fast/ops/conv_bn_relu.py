"""Fused convolution: BN-scale/shift + ReLU prologue, conv, bias + ReLU + adds epilogue.

    x'  = relu(x * in_scale[c] + in_shift[c])      (prologue; each part optional)
    y   = conv2d(x', weight, stride, padding)       (padded pixels are zero after the prologue)
    y   = y + bias[o];  y = relu(y) if out_relu
    y   = y + residual                               (same shape as y)
    y   = y + upsample[n, o, h // 2, w // 2]         (nearest 2x of a half-size tensor)

This is the building block of the eval-mode residual block (see :mod:`shg_fast.folding`):
the block's first BN becomes the prologue, the BN after each conv is folded into its weight.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..backends import FusedOp, common_device
from .upsample_add import upsample_add_reference

__all__ = ["conv_bn_relu", "conv_bn_relu_reference", "CONV_BN_RELU", "check_conv_bn_relu"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_conv_bn_relu(x, weight, bias=None, *, stride=1, padding=None, in_scale=None, in_shift=None,
                       residual=None, upsample=None, **_) -> None:
    """Raise TypeError/ValueError unless the arguments meet conv_bn_relu's contract."""
    tensors = {"x": x, "weight": weight, "bias": bias, "in_scale": in_scale, "in_shift": in_shift,
               "residual": residual, "upsample": upsample}
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"conv_bn_relu: {name} must be a Tensor, got {type(t).__name__}")
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"conv_bn_relu: {name} dtype must be one of {SUPPORTED_DTYPES}, got {t.dtype}")
    mixed = {name: t.dtype for name, t in tensors.items() if t is not None and t.dtype != x.dtype}
    if mixed:
        raise TypeError(f"conv_bn_relu: every tensor must have x's dtype {x.dtype}, got {mixed}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"conv_bn_relu: x and weight must be 4-D, got {tuple(x.shape)} and {tuple(weight.shape)}")
    out_c, in_c, kh, kw = weight.shape
    if x.shape[1] != in_c:
        raise ValueError(f"conv_bn_relu: x has {x.shape[1]} channels, weight expects {in_c}")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"conv_bn_relu: kernel must be square and odd, got {kh}x{kw}")
    if stride not in (1, 2):
        raise ValueError(f"conv_bn_relu: stride must be 1 or 2, got {stride}")
    if padding is not None and (not isinstance(padding, int) or not 0 <= padding <= kh // 2):
        raise ValueError(f"conv_bn_relu: padding must be an int in 0..{kh // 2}, got {padding!r}")
    for name, t, size in (("bias", bias, out_c), ("in_scale", in_scale, in_c), ("in_shift", in_shift, in_c)):
        if t is not None and tuple(t.shape) != (size,):
            raise ValueError(f"conv_bn_relu: {name} must have shape ({size},), got {tuple(t.shape)}")
    pad = kh // 2 if padding is None else padding
    n, _, h, w = x.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv_bn_relu: a {h}x{w} input is smaller than the {kh}x{kw} kernel with padding {pad}")
    if residual is not None and tuple(residual.shape) != (n, out_c, oh, ow):
        raise ValueError(f"conv_bn_relu: residual must have shape {(n, out_c, oh, ow)}, got {tuple(residual.shape)}")
    if upsample is not None and tuple(upsample.shape) != (n, out_c, (oh + 1) // 2, (ow + 1) // 2):
        raise ValueError(
            f"conv_bn_relu: upsample must have shape {(n, out_c, (oh + 1) // 2, (ow + 1) // 2)}, "
            f"got {tuple(upsample.shape)}"
        )
    common_device("conv_bn_relu", tensors.values())


def conv_bn_relu_reference(x, weight, bias=None, *, stride=1, padding=None, in_scale=None, in_shift=None,
                           in_relu=False, out_relu=False, residual=None, upsample=None) -> torch.Tensor:
    """Pure-PyTorch twin of the fused conv (unfused ATen ops; differentiable)."""
    if in_scale is not None:
        x = x * in_scale.view(1, -1, 1, 1)
    if in_shift is not None:
        x = x + in_shift.view(1, -1, 1, 1)
    if in_relu:
        x = F.relu(x)
    pad = weight.shape[-1] // 2 if padding is None else padding
    y = F.conv2d(x, weight, bias, stride=stride, padding=pad)
    if out_relu:
        y = F.relu(y)
    if residual is not None:
        y = y + residual
    if upsample is not None:
        y = upsample_add_reference(upsample, y)
    return y


CONV_BN_RELU = FusedOp("conv_bn_relu")
CONV_BN_RELU.register("reference", conv_bn_relu_reference)


def conv_bn_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 stride: int = 1, padding: int | None = None,
                 in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                 in_relu: bool = False, out_relu: bool = False,
                 residual: torch.Tensor | None = None, upsample: torch.Tensor | None = None,
                 backend: str | None = None) -> torch.Tensor:
    """Convolution with a fused BN+ReLU prologue and a bias/ReLU/residual/upsample epilogue.

    Args:
        x: ``(N, C_in, H, W)`` input (NCHW or channels_last).
        weight: ``(C_out, C_in, k, k)``, k odd (1, 3, 7).
        bias: optional ``(C_out,)``.
        stride: 1 or 2. padding: default ``k // 2`` (same padding at stride 1).
        in_scale, in_shift: optional ``(C_in,)`` per-channel affine applied to x as it is loaded
            (an eval-mode BatchNorm); in_relu: ReLU after it. Padding stays zero.
        out_relu: ReLU after the bias, before the adds.
        residual: optional tensor of the output's shape, added last but one.
        upsample: optional ``(N, C_out, ceil(OH/2), ceil(OW/2))``, nearest-2x upsampled and added last.
        backend: ``'auto'``, ``'reference'``, ``'triton'``, ... (see :mod:`shg_fast.backends`).

    Returns ``(N, C_out, OH, OW)`` in x's dtype.
    """
    kwargs = dict(stride=stride, padding=padding, in_scale=in_scale, in_shift=in_shift, in_relu=in_relu,
                  out_relu=out_relu, residual=residual, upsample=upsample)
    check_conv_bn_relu(x, weight, bias, **kwargs)
    return CONV_BN_RELU.run(x.device, backend, x, weight, bias, **kwargs)
