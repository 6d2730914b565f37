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
float32 CPU plans under ``auto`` run on oneDNN instead (:class:`_MkldnnRunner`: prepacked
weights, residual adds as conv post-ops (ReLU as a separate pass: oneDNN's ReLU post-op turns
NaN into 0), the BN-ReLU prologue as one clamp pass,
the C++ ``upsample_add``, and the 3x3 convs by the C++ Winograd F(4x4, 3x3) kernel unless
``SHG_FAST_WINOGRAD=0``), as no fused CPU conv kernel exists; :func:`mkldnn_runner_reasons`
says why it is not used, ``FusedPlan.info()["runner"]`` which runner a call takes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch.nn import functional as F

from . import ops
from .backends import requested_backend
from .fusion import FoldedResidual, fold_bn_into_conv, merge_head

__all__ = ["FusedPlan", "HourglassPlan", "StackPlan", "build_plan", "mkldnn_runner_reasons"]


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
        return _run(self._runner(x), self, _channels_last(x))

    def _runner(self, x: torch.Tensor) -> "_OpsRunner":
        """The mkldnn runner for float32 CPU tensors under ``auto`` (when oneDNN is present), else the ops."""
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()
                and not mkldnn_runner_reasons()):
            runner = self.__dict__.get("_mkldnn_runner")
            if runner is None:
                runner = _MkldnnRunner()
                self.__dict__["_mkldnn_runner"] = runner
            return runner
        return _OPS_RUNNER

    def info(self) -> dict:
        """A summary of the plan: dtype, device and how many of each fused piece it runs."""
        blocks = _count_blocks(self)
        mkldnn = self.device.type == "cpu" and self.dtype == torch.float32 and not mkldnn_runner_reasons()
        return {
            "dtype": str(self.dtype),
            "device": str(self.device),
            "num_stacks": len(self.stacks),
            "residual_blocks": blocks,
            "upsample_add_epilogues": len(self.stacks) * _hourglass_depth(self.stacks[0].hourglass),
            "merged_heads": sum(s.head_w.shape[0] > self.num_joints for s in self.stacks),
            "runner": "mkldnn" if mkldnn else "ops",
            "winograd_3x3": mkldnn and winograd_enabled(),
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


class _OpsRunner:
    """Runs the plan's pieces with the public fused ops (the backend is picked per call)."""

    def stem(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ops.conv_bn_relu(x, w, b, stride=2, padding=3, out_relu=True)

    def block(self, x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None) -> torch.Tensor:
        return ops.residual_block(x, block, upsample)

    def lin(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ops.conv_bn_relu(x, w, b, out_relu=True)

    def head(self, ll: torch.Tensor, stack: StackPlan, k: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps and the next residual stream, from one GEMM with ``K (+ f)`` outputs."""
        out = ops.conv_bn_relu(ll, stack.head_w, stack.head_b)
        return out[:, :k], (h + out[:, k:] if out.shape[1] > k else h)


_OPS_RUNNER = _OpsRunner()


def mkldnn_runner_reasons() -> list[str]:
    """Why float32 CPU plans cannot run on the oneDNN runner here (empty when they do).

    The runner is the CPU path of ``auto``: convolutions with prepacked weights and fused ReLU
    or add (``torch.ops.mkldnn._convolution_pointwise``), the C++ ``upsample_add``. A forced
    backend (``SHG_FAST_BACKEND``) makes the plan run the public ops instead.
    """
    reasons = []
    if requested_backend() != "auto":
        reasons.append(f"backend {requested_backend()!r} is forced")
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        reasons.append("this PyTorch build has no oneDNN convolution_pointwise")
    return reasons


#: 1x1 convs on maps of at most this many pixels (8x8) run as plain ATen convs in the CPU runner.
SMALL_MAP_PIXELS = 64

#: Environment variable: ``0`` makes the CPU runner use oneDNN's direct 3x3 convolutions instead of Winograd.
WINOGRAD_ENV_VAR = "SHG_FAST_WINOGRAD"

#: Smallest map side on which the CPU runner's 3x3 convs use Winograd F(4x4, 3x3) (one 4x4 tile
#: wastes most of its work on padding below this).
WINOGRAD_MIN_SIDE = 8


def winograd_enabled() -> bool:
    """True when the CPU runner's 3x3 convolutions use Winograd: the kernel exists and ``$SHG_FAST_WINOGRAD`` is not 0."""
    return os.environ.get(WINOGRAD_ENV_VAR, "1").strip() != "0" and ops.winograd_available()


class _MkldnnRunner(_OpsRunner):
    """float32 CPU: oneDNN convolutions with weights prepacked once per plan, the add fused, NaN kept.

    The add of a residual (and of the upsampled lower branch, added into it beforehand by the
    C++ upsample_add) is a post-op of the conv producing the block's output.
    """

    def __init__(self):
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, packed)
        self._winograd: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, transformed)
        self._head_parts: dict[int, tuple[torch.Tensor, ...]] = {}  # id(head_w) -> (head_w, split w and b)
        self._clamped: dict[int, tuple] = {}  # id(block) -> (block, lo, hi, w1, b1): see _clamp_prologue

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, stride: int = 1, padding: int | None = None,
              relu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        pad = [w.shape[-1] // 2 if padding is None else padding] * 2
        if (w.shape[-1] == 3 and stride == 1 and pad[0] == 1 and add is None
                and min(x.shape[-2:]) >= WINOGRAD_MIN_SIDE and winograd_enabled()):
            entry = self._winograd.get(id(w))
            if entry is None or entry[0] is not w:
                entry = self._winograd[id(w)] = (w, ops.winograd_weight(w))
            return ops.winograd_conv3x3(x, entry[1], b, relu=relu)
        if w.shape[-1] == 1 and x.shape[-1] * x.shape[-2] <= SMALL_MAP_PIXELS:
            y = F.conv2d(x, w, b)  # ATen's direct path beats oneDNN's per-call overhead on tiny maps
            return y.relu_() if relu else y if add is None else y.add_(add)
        entry = self._packed.get(id(w))
        if entry is None or entry[0] is not w:
            packed = torch.ops.mkldnn._reorder_convolution_weight(w, pad, [stride] * 2, [1, 1], 1, list(x.shape))
            entry = self._packed[id(w)] = (w, packed)
        if add is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, add, entry[1], b, pad, [stride] * 2, [1, 1], 1, "add", 1.0, None, [], None)
        # ReLU as a separate ATen pass: oneDNN's fused ReLU post-op maps NaN to 0 (a silent wrong result).
        y = torch.ops.mkldnn._convolution_pointwise(x, entry[1], b, pad, [stride] * 2, [1, 1], 1, "none", [], "")
        return y.relu_() if relu else y

    def stem(self, x, w, b):
        return self._conv(x, w, b, stride=2, padding=3, relu=True)

    def _clamp_prologue(self, block: FoldedResidual) -> tuple:
        """The prologue ``relu(s*x + t)`` before the 1x1 conv1 as one clamp, s and t moved into conv1.

        With ``c = -t/s``: ``relu(s*x + t) = s*(clamp(x, lo, hi) - c)``, ``lo = c, hi = inf`` where
        ``s > 0`` and ``lo = -inf, hi = c`` where ``s < 0`` (``s = 0`` gives the constant
        ``relu(t)``). ``s`` scales conv1's input channels and the constant part goes into its
        bias (exact: a 1x1 conv has no padding), so the prologue is a single pass over x.
        """
        entry = self._clamped.get(id(block))
        if entry is None or entry[0] is not block:
            s, t = block.in_scale, block.in_shift
            nonzero = s != 0
            c = torch.where(nonzero, -t / torch.where(nonzero, s, torch.ones_like(s)), torch.zeros_like(s))
            inf = torch.full_like(s, float("inf"))
            lo = torch.where(s > 0, c, torch.where(nonzero, -inf, c))
            hi = torch.where(s < 0, c, torch.where(nonzero, inf, c))
            const = torch.where(nonzero, -s * c, t.clamp_min(0))
            w1 = (block.w1 * s.view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)
            b1 = block.b1 + block.w1.flatten(1) @ const
            entry = self._clamped[id(block)] = (block, lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1), w1, b1)
        return entry[1:]

    def block(self, x, block, upsample):
        lo, hi, w1, b1 = self._clamp_prologue(block)
        h = self._conv(torch.clamp(x, lo, hi), w1, b1, relu=True)
        h = self._conv(h, block.w2, block.b2, relu=True)
        skip = x if block.ws is None else self._conv(x, block.ws, block.bs)
        if upsample is not None:
            skip = ops.upsample_add(upsample, skip)
        return self._conv(h, block.w3, block.b3, add=skip)

    def lin(self, x, w, b):
        return self._conv(x, w, b, relu=True)

    def head(self, ll, stack, k, h):
        """Heatmaps and the residual-stream update as two convs, the stream added as a post-op."""
        w, b = stack.head_w, stack.head_b
        if w.shape[0] == k:
            return self._conv(ll, w, b), h
        parts = self._head_parts
        if id(w) not in parts or parts[id(w)][0] is not w:
            parts[id(w)] = (w, w[:k].contiguous(memory_format=torch.channels_last), b[:k].contiguous(),
                            w[k:].contiguous(memory_format=torch.channels_last), b[k:].contiguous())
        _, w_hm, b_hm, w_up, b_up = parts[id(w)]
        return self._conv(ll, w_hm, b_hm), self._conv(ll, w_up, b_up, add=h)


def _run(runner: _OpsRunner, plan: FusedPlan, x: torch.Tensor) -> list[torch.Tensor]:
    h = runner.stem(x, plan.stem_w, plan.stem_b)
    h = _run_blocks(runner, h, plan.stem_blocks[:1])
    h = _run_blocks(runner, F.max_pool2d(h, 2, 2), plan.stem_blocks[1:])
    outputs = []
    for stack in plan.stacks:
        ll = _run_blocks(runner, _run_hourglass(runner, h, stack.hourglass), stack.res)
        ll = runner.lin(ll, stack.lin_w, stack.lin_b)
        heatmaps, h = runner.head(ll, stack, plan.num_joints, h)
        outputs.append(heatmaps.contiguous())
    return outputs


def _run_blocks(runner: _OpsRunner, x: torch.Tensor, blocks: list[FoldedResidual],
                upsample: torch.Tensor | None = None) -> torch.Tensor:
    """Residual blocks in sequence; ``upsample`` (if any) is added in the last block's epilogue."""
    for i, block in enumerate(blocks):
        x = runner.block(x, block, upsample if i == len(blocks) - 1 else None)
    return x


def _run_hourglass(runner: _OpsRunner, x: torch.Tensor, plan: HourglassPlan) -> torch.Tensor:
    low = _run_blocks(runner, F.max_pool2d(x, 2, 2), plan.low1)
    if isinstance(plan.low2, HourglassPlan):
        low = _run_hourglass(runner, low, plan.low2)
    else:
        low = _run_blocks(runner, low, plan.low2)
    low = _run_blocks(runner, low, plan.low3)
    return _run_blocks(runner, x, plan.up1, upsample=low)


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
