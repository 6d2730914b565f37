"""The eval-mode fused plan of a Stacked Hourglass: folded parameters and the code that runs them.

:func:`build_plan` reads an eval-mode model (a :class:`shg_fast.reference.StackedHourglass`
or the drop-in :class:`shg_fast.StackedHourglass`, BatchNorm or SyncBatchNorm) and folds it:

* stem conv7x7 + BN → one conv with a fused ReLU;
* every residual block → :class:`~shg_fast.fusion.FoldedResidual` (the block's first BN as the
  conv prologue, the other BNs folded into their convs), run by :func:`shg_fast.ops.residual_block`;
* the hourglass ``up1 + upsample(low3)`` → the upsample-add epilogue of the last ``up1`` block;
* ``lin`` conv + BN → one conv with a fused ReLU;
* the heatmap conv and the two merge convs → one 1x1 conv with ``K + f`` outputs
  (:func:`shg_fast.fusion.merge_head`), the residual stream added to its last ``f`` channels.

:meth:`FusedPlan.__call__` runs the plan with the public ops of :mod:`shg_fast.ops`, so the
best backend for the tensors' device is picked per call (``auto``), activations channels_last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch.nn import functional as F

from . import ops
from .fusion import FoldedResidual, fold_bn_into_conv, merge_head

__all__ = ["FusedPlan", "HourglassPlan", "StackPlan", "build_plan"]


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


@dataclass
class FusedPlan:
    """The folded parameters of a whole eval-mode Stacked Hourglass; call it on an input batch."""

    stem_w: torch.Tensor
    stem_b: torch.Tensor
    stem_blocks: list[FoldedResidual]  # r1; maxpool runs after it; then r4, r5
    stacks: list[StackPlan]
    num_joints: int

    @property
    def dtype(self) -> torch.dtype:
        return self.stem_w.dtype

    @property
    def device(self) -> torch.device:
        return self.stem_w.device

    def to(self, *args, **kwargs) -> "FusedPlan":
        """A copy with every tensor moved/cast as ``Tensor.to(*args, **kwargs)``, 4-D ones channels_last."""
        return _map_tensors(self, lambda t: _channels_last(t.to(*args, **kwargs)))

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the plan: ``x`` ``(N, 3, H, W)`` in the plan's dtype/device → list of heatmaps per stack."""
        x = _channels_last(x)
        h = ops.conv_bn_relu(x, self.stem_w, self.stem_b, stride=2, padding=3, out_relu=True)
        h = _run_blocks(h, self.stem_blocks[:1])
        h = _run_blocks(F.max_pool2d(h, 2, 2), self.stem_blocks[1:])
        outputs = []
        k = self.num_joints
        for stack in self.stacks:
            ll = _run_blocks(_run_hourglass(h, stack.hourglass), stack.res)
            ll = ops.conv_bn_relu(ll, stack.lin_w, stack.lin_b, out_relu=True)
            head = ops.conv_bn_relu(ll, stack.head_w, stack.head_b)
            outputs.append(head[:, :k].contiguous())
            if head.shape[1] > k:
                h = h + head[:, k:]
        return outputs

    def info(self) -> dict:
        """A summary of the plan: dtype, device and how many of each fused piece it runs."""
        blocks = _count_blocks(self)
        return {
            "dtype": str(self.dtype),
            "device": str(self.device),
            "num_stacks": len(self.stacks),
            "residual_blocks": blocks,
            "upsample_add_epilogues": len(self.stacks) * _hourglass_depth(self.stacks[0].hourglass),
            "merged_heads": sum(s.head_w.shape[0] > self.num_joints for s in self.stacks),
        }


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``fn`` to every tensor inside nested plan dataclasses and lists."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_tensors(o, fn) for o in obj]
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    return obj


def _run_blocks(x: torch.Tensor, blocks: list[FoldedResidual], upsample: torch.Tensor | None = None) -> torch.Tensor:
    """Residual blocks in sequence; ``upsample`` (if any) is added in the last block's epilogue."""
    for i, block in enumerate(blocks):
        x = ops.residual_block(x, block, upsample if i == len(blocks) - 1 else None)
    return x


def _run_hourglass(x: torch.Tensor, plan: HourglassPlan) -> torch.Tensor:
    low = _run_blocks(F.max_pool2d(x, 2, 2), plan.low1)
    low = _run_hourglass(low, plan.low2) if isinstance(plan.low2, HourglassPlan) else _run_blocks(low, plan.low2)
    low = _run_blocks(low, plan.low3)
    return _run_blocks(x, plan.up1, upsample=low)


def _hourglass_depth(plan: HourglassPlan) -> int:
    return 1 + (_hourglass_depth(plan.low2) if isinstance(plan.low2, HourglassPlan) else 0)


def _count_blocks(obj) -> int:
    if isinstance(obj, FoldedResidual):
        return 1
    if isinstance(obj, list):
        return sum(_count_blocks(o) for o in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_count_blocks(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def _fold_blocks(seq) -> list[FoldedResidual]:
    return [FoldedResidual.from_module(m) for m in seq]


def _fold_hourglass(hg) -> HourglassPlan:
    low2 = _fold_blocks(hg.low2) if isinstance(hg.low2, torch.nn.Sequential) else _fold_hourglass(hg.low2)
    return HourglassPlan(up1=_fold_blocks(hg.up1), low1=_fold_blocks(hg.low1), low2=low2,
                         low3=_fold_blocks(hg.low3))


@torch.no_grad()
def build_plan(model) -> FusedPlan:
    """Fold an eval-mode Stacked Hourglass into a :class:`FusedPlan` (its current weights and BN statistics).

    The plan has the model's dtype and device; weights are channels_last. Fold 16-bit models
    from a float32 copy for accuracy (``build_plan(copy.deepcopy(model).float()).to(dtype)``).
    """
    stem_w, stem_b = fold_bn_into_conv(model.conv1, model.bn1)
    stacks = []
    for s in range(model.num_stacks):
        merge = s < model.num_stacks - 1
        lin_w, lin_b = fold_bn_into_conv(model.lin[s].conv, model.lin[s].bn)
        head_w, head_b = merge_head(model.out[s], model.merge_features[s] if merge else None,
                                    model.merge_preds[s] if merge else None)
        stacks.append(StackPlan(hourglass=_fold_hourglass(model.hg[s]), res=_fold_blocks(model.res[s]),
                                lin_w=lin_w, lin_b=lin_b, head_w=head_w, head_b=head_b))
    plan = FusedPlan(stem_w=stem_w, stem_b=stem_b,
                     stem_blocks=_fold_blocks([model.r1, model.r4, model.r5]),
                     stacks=stacks, num_joints=model.num_joints)
    return _map_tensors(plan, _channels_last)
