"""The eval-mode fused plan of a Stacked Hourglass: folded parameters and the code that runs them.

:func:`build_plan` reads an eval-mode model (a :class:`shg_fast.reference.StackedHourglass`
or the drop-in :class:`shg_fast.StackedHourglass`, BatchNorm or SyncBatchNorm) and folds it:

* stem conv7x7 + BN → one conv with a fused ReLU;
* every residual block → :class:`~shg_fast.folding.FoldedResidual` (the block's first BN as the
  conv prologue, the other BNs folded into their convs), run by :func:`shg_fast.ops.residual_block`;
* the hourglass ``up1 + upsample(low3)`` → the upsample-add epilogue of the last ``up1`` block;
* ``lin`` conv + BN → one conv with a fused ReLU;
* the heatmap conv and the two merge convs → one 1x1 conv with ``K + f`` outputs
  (:func:`shg_fast.folding.merge_head`), the residual stream added to its last ``f`` channels.

:meth:`FusedPlan.__call__` runs the :class:`~shg_fast.engine.Program` built for the input's
shape (:mod:`shg_fast.engine`: tactics chosen once, weights in each kernel's layout, no per-call
backend choice). Its float32 CPU tactics are :class:`~shg_fast.cpu_runner.CpuConvs`: every 1x1 conv on the C++
``conv1x1`` kernel with the block's BN-ReLU prologue (one per-channel clamp), bias, residual add
and ReLU fused unless ``SHG_FAST_CONV1X1=0``, the 3x3 convs by the C++ Winograd F(4x4, 3x3) kernel
unless ``SHG_FAST_WINOGRAD=0``, the C++ ``upsample_add``, and oneDNN convolutions with prepacked
weights for the rest (the stem's 7x7; with the kernels off, the 1x1 and 3x3 convs too), residual
adds as their post-ops (ReLU as a separate in-place pass: oneDNN's ReLU post-op turns NaN into 0)
and the clamp a separate pass. bfloat16 plans take the same runner where oneDNN has native bfloat16
convolutions (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; AMX or AVX-512 BF16 make them fast, detected
through torch, never assumed): weights prepacked in bf16 for oneDNN's kernels (AMX where present),
the residual add a post-op, the prologue clamp and the upsample-add in bf16, float32 accumulation
inside oneDNN; no Winograd (float32 only). :func:`~shg_fast.cpu_runner.mkldnn_runner_reasons` says why a dtype does not
run on the runner here, ``FusedPlan.info()["runner"]`` which runner a call takes. Under ``torch.compile`` the plan runs
through the public ops of :mod:`shg_fast.ops` instead (``_OpsRunner``), which dynamo traces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from . import ops
from .cpu_runner import (CONV1X1_ENV_VAR, SMALL_MAP_PIXELS, WINOGRAD_ENV_VAR, WINOGRAD_MIN_SIDE, CpuConvs,
                         conv1x1_enabled, cpu_bf16_reasons, mkldnn_runner_reasons, winograd_enabled)
from .engine import Program, build_program, current_settings
from .folding import FoldedResidual, HourglassPlan, StackPlan, fold_bn_into_conv, merge_head

__all__ = ["CONV1X1_ENV_VAR", "CpuConvs", "FusedPlan", "HourglassPlan", "MAX_PROGRAMS", "SMALL_MAP_PIXELS",
           "StackPlan", "WINOGRAD_ENV_VAR", "WINOGRAD_MIN_SIDE", "build_plan", "conv1x1_enabled", "cpu_bf16_reasons",
           "mkldnn_runner_reasons", "winograd_enabled"]


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
        """Run the plan: ``x`` ``(N, 3, H, W)`` in the plan's dtype/device → list of heatmaps per stack.

        Runs the :class:`~shg_fast.engine.Program` built for ``x``'s shape (:meth:`program`);
        under ``torch.compile`` the plan runs through the public ops instead, which dynamo traces.
        """
        if torch.compiler.is_compiling():
            return _run(_OPS_RUNNER, self, _channels_last(x))
        return self.program(x)(x)

    def program(self, x: torch.Tensor, *, decode: bool = False, flip_pairs=None) -> "Program":
        """The program for inputs like ``x`` and the current settings, built on first use and kept.

        Programs are cached per (shape, dtype, device, settings, decode, flip pairs), the
        ``MAX_PROGRAMS`` most recently built ones; see :func:`shg_fast.engine.build_program`.
        """
        settings = current_settings()
        flip = None if flip_pairs is None else tuple(map(tuple, flip_pairs))
        key = (tuple(x.shape), x.dtype, x.device, settings, decode, flip)
        programs = self.__dict__.setdefault("_programs", {})
        program = programs.get(key)
        if program is None:
            if x.dim() != 4 or x.dtype != self.dtype or x.device != self.device:
                raise ValueError(f"the plan runs {self.dtype} (N, 3, H, W) inputs on {self.device}, got "
                                 f"{x.dtype} {tuple(x.shape)} on {x.device}")
            program = build_program(self, x.shape[0], x.shape[2], x.shape[3], settings=settings, decode=decode,
                                    flip_pairs=flip_pairs)
            if len(programs) >= MAX_PROGRAMS:
                programs.pop(next(iter(programs)))
            programs[key] = program
        return program

    def info(self) -> dict:
        """A summary of the plan: dtype, device and how many of each fused piece it runs."""
        blocks = _count_blocks(self)
        mkldnn = self.device.type == "cpu" and not mkldnn_runner_reasons(self.dtype)
        return {
            "dtype": str(self.dtype),
            "device": str(self.device),
            "num_stacks": len(self.stacks),
            "residual_blocks": blocks,
            "upsample_add_epilogues": len(self.stacks) * _hourglass_depth(self.stacks[0].hourglass),
            "merged_heads": sum(s.head_w.shape[0] > self.num_joints for s in self.stacks),
            "runner": "mkldnn" if mkldnn else "ops",
            "winograd_3x3": mkldnn and self.dtype == torch.float32 and winograd_enabled(),
            "conv1x1": mkldnn and self.dtype == torch.float32 and conv1x1_enabled(),
        }


#: Programs a plan keeps (one per input shape and settings); the oldest is dropped beyond this.
MAX_PROGRAMS = 8


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
    """Runs the plan's pieces with the public fused ops (the backend is picked per call): the torch.compile path."""

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
