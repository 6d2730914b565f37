"""The eval-mode pre-activation residual block as one op.

``residual_block(x, block)`` equals ``Residual.eval()(x)`` for the module ``block`` was
folded from (:class:`shg_fast.folding.FoldedResidual`), optionally plus a nearest-2x
upsampled lower branch (the hourglass's ``up1 + upsample(low3)`` when this block is the last
of ``up1``). With ``pool_input`` the block runs on ``max_pool2d(x, 2, 2)`` (the hourglass's
``low1`` and the stem's pool), which the kernels read as they load ``x``: one launch less.
"""

from __future__ import annotations

import torch

from ..backends import FusedOp
from ..folding import FoldedResidual
from torch.nn import functional as F

from .conv_bn_relu import SUPPORTED_DTYPES, conv_bn_relu_reference

__all__ = ["residual_block", "residual_block_reference", "RESIDUAL_BLOCK", "check_residual_block", "block_size"]


def block_size(x: torch.Tensor, pool_input: bool) -> tuple[int, int]:
    """The block's own (H, W): x's, or with ``pool_input`` those of its 2x2/stride-2 max-pool (floor)."""
    h, w = x.shape[-2:]
    return (h // 2, w // 2) if pool_input else (h, w)


def check_residual_block(x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None = None,
                         pool_input: bool = False) -> None:
    """Raise TypeError/ValueError unless ``(x, block, upsample, pool_input)`` meet the op's contract."""
    if not isinstance(block, FoldedResidual):
        raise TypeError(f"residual_block: block must be a FoldedResidual, got {type(block).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"residual_block: x must be a 4-D tensor (N, C, H, W), got {getattr(x, 'shape', x)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"residual_block: x dtype must be one of {SUPPORTED_DTYPES}, got {x.dtype}")
    if x.shape[1] != block.in_channels:
        raise ValueError(f"residual_block: x has {x.shape[1]} channels, block expects {block.in_channels}")
    if block.w1.dtype != x.dtype or block.w1.device != x.device:
        raise ValueError(
            f"residual_block: block parameters are {block.w1.dtype} on {block.w1.device}, x is {x.dtype} on "
            f"{x.device}; use block.to(x)"
        )
    if pool_input and (x.shape[2] < 2 or x.shape[3] < 2):
        raise ValueError(f"residual_block: pool_input needs x of at least 2x2 pixels (2x2 max-pool, stride 2), "
                         f"got {tuple(x.shape)}")
    if upsample is not None:
        h, w = block_size(x, pool_input)
        expected = (x.shape[0], block.out_channels, (h + 1) // 2, (w + 1) // 2)
        if tuple(upsample.shape) != expected or upsample.dtype != x.dtype or upsample.device != x.device:
            raise ValueError(
                f"residual_block: upsample must be {expected} {x.dtype} on {x.device}, got "
                f"{tuple(upsample.shape)} {upsample.dtype} on {upsample.device}"
            )


def residual_block_reference(x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None = None,
                             pool_input: bool = False) -> torch.Tensor:
    """Pure-PyTorch twin: (max-pool,) three fused convs, the projection skip sharing the last GEMM."""
    if pool_input:
        x = F.max_pool2d(x, 2, 2)  # floor; NaN propagates
    h = conv_bn_relu_reference(x, block.w1, block.b1, in_scale=block.in_scale, in_shift=block.in_shift,
                               in_relu=True, out_relu=True)
    h = conv_bn_relu_reference(h, block.w2, block.b2, out_relu=True)
    w, b = block.last_gemm()
    if block.ws is None:
        return conv_bn_relu_reference(h, w, b, residual=x, upsample=upsample)
    return conv_bn_relu_reference(torch.cat([h, x], dim=1), w, b, upsample=upsample)


RESIDUAL_BLOCK = FusedOp("residual_block")
RESIDUAL_BLOCK.register("reference", residual_block_reference)


def residual_block(x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None = None, *,
                   pool_input: bool = False, backend: str | None = None) -> torch.Tensor:
    """One eval-mode residual block: ``Residual(x)`` (+ ``nearest_up_2x(upsample)``).

    Args:
        x: ``(N, C_in, H, W)`` residual-stream input.
        block: the folded parameters, ``FoldedResidual.from_module(residual.eval())``, on x's
            device and dtype (``block.to(x)``).
        upsample: optional ``(N, C_out, ceil(H/2), ceil(W/2))`` added after nearest 2x upsampling
            (H, W: the block's own size, the pooled one with ``pool_input``).
        pool_input: run the block on ``max_pool2d(x, 2, 2)`` (floor, NaN propagates, as
            ``nn.MaxPool2d(2, 2)``), read as the kernels load ``x``; the output is then
            ``(N, C_out, H // 2, W // 2)``.
        backend: ``'auto'``, ``'reference'``, ``'triton'``, ``'cuda'`` ...
    """
    check_residual_block(x, block, upsample, pool_input)
    return RESIDUAL_BLOCK.run(x.device, backend, x, block, upsample, pool_input)
