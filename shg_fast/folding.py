"""Eval-mode folding: BatchNorm folded into convolutions, and the folded blocks, levels and stacks.

A reference :class:`~shg_fast.reference.Residual` in eval mode computes

    relu(bn1(x)) → conv1 → bn2 → relu → conv2 → bn3 → relu → conv3, + skip(x)

Each BN that follows a conv is folded into that conv's weight and bias; ``bn1`` acts on the
raw residual stream (also read by an identity skip), so it stays a per-channel scale/shift
applied in the first conv's prologue. :class:`FoldedResidual` holds the result;
:class:`HourglassPlan` and :class:`StackPlan` hold a folded hourglass level and stack.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union

import torch
from torch import nn

from .reference import Residual

__all__ = ["bn_scale_shift", "fold_bn_into_conv", "merge_head", "FoldedResidual", "HourglassPlan", "StackPlan"]


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as a single conv (eval-mode BN)."""
    scale, shift = bn_scale_shift(bn)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return weight, bias


@dataclass
class FoldedResidual:
    """The folded parameters of one eval-mode Residual.

    Attributes:
        in_scale, in_shift: ``(C_in,)`` bn1 as a prologue affine, followed by ReLU.
        w1, b1: conv1x1 ``(mid, C_in, 1, 1)`` with bn2 folded; ReLU after.
        w2, b2: conv3x3 ``(mid, mid, 3, 3)`` with bn3 folded; ReLU after.
        w3, b3: conv1x1 ``(C_out, mid, 1, 1)``.
        ws, bs: projection skip conv1x1 ``(C_out, C_in, 1, 1)`` on the raw input, or None for
            the identity skip.
    """

    in_scale: torch.Tensor
    in_shift: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    ws: torch.Tensor | None = None
    bs: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def from_module(cls, module: Residual) -> "FoldedResidual":
        """Fold an eval-mode :class:`Residual` (its BN running statistics are used)."""
        in_scale, in_shift = bn_scale_shift(module.bn1)
        w1, b1 = fold_bn_into_conv(module.conv1, module.bn2)
        w2, b2 = fold_bn_into_conv(module.conv2, module.bn3)
        skip = module.skip
        return cls(
            in_scale=in_scale, in_shift=in_shift, w1=w1, b1=b1, w2=w2, b2=b2,
            w3=module.conv3.weight.detach().clone(), b3=module.conv3.bias.detach().clone(),
            ws=None if skip is None else skip.weight.detach().clone(),
            bs=None if skip is None else skip.bias.detach().clone(),
        )

    @property
    def in_channels(self) -> int:
        return self.w1.shape[1]

    @property
    def mid_channels(self) -> int:
        return self.w1.shape[0]

    @property
    def out_channels(self) -> int:
        return self.w3.shape[0]

    def last_gemm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """conv3 and the projection skip as one conv over ``cat([h, x], dim=1)`` (concatenated along K).

        For the identity skip this is just ``(w3, b3)``.
        """
        if self.ws is None:
            return self.w3, self.b3
        return torch.cat([self.w3, self.ws], dim=1), self.b3 + self.bs

    def to(self, *args, **kwargs) -> "FoldedResidual":
        """A copy with every tensor moved/cast as ``Tensor.to(*args, **kwargs)``."""
        return FoldedResidual(**{
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(*args, **kwargs)
            for f in fields(self)
        })


@torch.no_grad()
def merge_head(out: nn.Conv2d, merge_features: nn.Conv2d | None = None,
               merge_preds: nn.Conv2d | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-stack head as one 1x1 conv on ``ll``: heatmaps, then the residual-stream update.

    ``merge_features(ll) + merge_preds(out(ll))`` is linear in ``ll`` (no nonlinearity between),
    so it is the single 1x1 conv ``W = Wf + Wp·Wo``, ``b = bf + Wp·bo + bp``. Stacked under the
    heatmap conv ``Wo`` it shares one GEMM: the result has ``K + f`` output channels, the first
    ``K`` being the heatmaps and the last ``f`` the update added to the residual stream.
    Without the merge convs (the last stack) this is just ``out``'s weight and bias.
    """
    w_out, b_out = out.weight.detach().flatten(1), out.bias.detach()
    if merge_features is None and merge_preds is None:
        return out.weight.detach().clone(), b_out.clone()
    if merge_features is None or merge_preds is None:
        raise ValueError("merge_head needs both merge_features and merge_preds, or neither")
    w_f, b_f = merge_features.weight.detach().flatten(1), merge_features.bias.detach()
    w_p, b_p = merge_preds.weight.detach().flatten(1), merge_preds.bias.detach()
    w_merged = w_f + w_p @ w_out
    b_merged = b_f + w_p @ b_out + b_p
    weight = torch.cat([w_out, w_merged], dim=0)
    return weight.view(*weight.shape, 1, 1).clone(), torch.cat([b_out, b_merged])


@dataclass
class HourglassPlan:
    """One folded hourglass level: ``up1`` blocks, then the pooled ``low1 → low2 → low3`` branch."""

    up1: list[FoldedResidual]
    low1: list[FoldedResidual]
    low2: Union["HourglassPlan", list[FoldedResidual]]
    low3: list[FoldedResidual]


@dataclass
class StackPlan:
    """One folded stack: hourglass, residuals, ``lin`` (conv+BN folded, ReLU) and the merged head.

    ``head_w`` has ``K`` output channels (heatmaps) in the last stack, else ``K + f``: heatmaps
    followed by the merged ``merge_features(ll) + merge_preds(heatmaps)`` update.
    """

    hourglass: HourglassPlan
    res: list[FoldedResidual]
    lin_w: torch.Tensor
    lin_b: torch.Tensor
    head_w: torch.Tensor
    head_b: torch.Tensor
