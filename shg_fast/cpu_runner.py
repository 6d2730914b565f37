"""The CPU runner's tactics: how the fused plan's convs run on a CPU (float32, and bfloat16 where
oneDNN has native bfloat16 convolutions).

:class:`CpuConvs` decides once per program how each conv runs: every float32 1x1 conv on the C++
``conv1x1`` kernel with the block's BN-ReLU prologue (one per-channel clamp), bias, residual add
and ReLU fused unless ``SHG_FAST_CONV1X1=0``; 3x3 convs by the C++ Winograd F(4x4, 3x3) kernel
unless ``SHG_FAST_WINOGRAD=0``; the rest on oneDNN convolutions with prepacked weights and the
residual add as a post-op. :func:`mkldnn_runner_reasons` says why a dtype cannot take this runner
here. The engine (:mod:`shg_fast.engine`) builds the CPU program's steps with it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch
from torch.nn import functional as F

from . import ops
from .backends import requested_backend
from .folding import FoldedResidual
from .ops.conv1x1 import conv1x1, conv1x1_available, conv1x1_weight
from .ops.upsample_add import UPSAMPLE_ADD
from .tactics import Tactic

__all__ = ["CONV1X1_ENV_VAR", "CpuConvs", "SMALL_MAP_PIXELS", "WINOGRAD_ENV_VAR", "WINOGRAD_MIN_SIDE",
           "conv1x1_enabled", "cpu_bf16_reasons", "mkldnn_runner_reasons", "winograd_enabled"]


def mkldnn_runner_reasons(dtype: torch.dtype = torch.float32) -> list[str]:
    """Why CPU plans in ``dtype`` cannot run on the oneDNN runner here (empty when they do).

    The runner is the CPU path of ``auto`` for float32, and for bfloat16 where oneDNN has native
    bf16 convolutions (:func:`cpu_bf16_reasons`): convolutions with prepacked weights and a fused
    add (``torch.ops.mkldnn._convolution_pointwise``), the C++ ``upsample_add``. A forced backend
    (``SHG_FAST_BACKEND``) makes the plan run the public ops instead.
    """
    reasons = []
    if requested_backend() != "auto":
        reasons.append(f"backend {requested_backend()!r} is forced")
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        reasons.append("this PyTorch build has no oneDNN convolution_pointwise")
    if dtype == torch.bfloat16:
        reasons += cpu_bf16_reasons()
    elif dtype != torch.float32:
        reasons.append(f"the CPU runner runs float32 and bfloat16 plans, not {dtype}")
    return reasons


def cpu_bf16_reasons() -> list[str]:
    """Why oneDNN cannot run bfloat16 convolutions on this CPU (empty when it can), as torch detects it.

    oneDNN's bf16 convolutions need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; they are fast with
    AVX-512 BF16 or AMX (``shg_fast.peers.cpu_bf16_support`` lists which the CPU has).
    """
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if supported is None or not supported():
        return ["oneDNN has no bfloat16 convolutions on this CPU (they need AVX-512 BW/VL/DQ or AVX-NE-CONVERT; "
                "AMX or AVX-512 BF16 make them fast): torch.ops.mkldnn._is_mkldnn_bf16_supported() is False"]
    return []


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


#: Environment variable: ``0`` makes the CPU runner run its float32 1x1 convs on oneDNN instead of shg_fast::conv1x1.
CONV1X1_ENV_VAR = "SHG_FAST_CONV1X1"


def conv1x1_enabled() -> bool:
    """True when the CPU runner's float32 1x1 convs use ``shg_fast::conv1x1`` (the kernel exists, ``$SHG_FAST_CONV1X1`` is not 0)."""
    return os.environ.get(CONV1X1_ENV_VAR, "1").strip() != "0" and conv1x1_available()


def _onednn_pack(w: torch.Tensor, pad: list[int], stride: int, x_shape) -> torch.Tensor:
    """``w`` reordered once into oneDNN's blocked layout for inputs of ``x_shape`` (its dtype kept)."""
    return torch.ops.mkldnn._reorder_convolution_weight(w, pad, [stride] * 2, [1, 1], 1, list(x_shape))


def _onednn_conv(x: torch.Tensor, packed: torch.Tensor, b: torch.Tensor, pad: list[int], stride: int) -> torch.Tensor:
    """oneDNN conv + bias (no post-op): float32 accumulation, the result in ``x``'s dtype."""
    return torch.ops.mkldnn._convolution_pointwise(x, packed, b, pad, [stride] * 2, [1, 1], 1, "none", [], "")


def _onednn_conv_add(x: torch.Tensor, a: torch.Tensor, packed: torch.Tensor, b: torch.Tensor, pad: list[int],
                     stride: int) -> torch.Tensor:
    """oneDNN conv + bias with ``a`` added as a binary post-op (before the result is rounded to x's dtype)."""
    return torch.ops.mkldnn._convolution_pointwise.binary(x, a, packed, b, pad, [stride] * 2, [1, 1], 1, "add", 1.0,
                                                          None, [], None)


class CpuConvs:
    """float32/bfloat16 CPU tactics: 1x1 convs by shg_fast::conv1x1, 3x3 by Winograd, the rest on oneDNN.

    The CPU runner of the engine (:mod:`shg_fast.engine`): :meth:`conv` and :meth:`block`
    decide, once per program, how each conv runs (``conv1x1``, Winograd, ATen or prepacked oneDNN)
    and return a callable with those decisions and the packed weights bound, and its tactic. Fused
    into the conv producing a block's output: the residual add and, where that conv is a
    ``conv1x1``, the upsampled lower branch of the hourglass (else the C++ upsample_add adds it
    first); into a block's first conv where it is a ``conv1x1``: the BN-ReLU prologue, a
    per-channel clamp.

    Memory: ``conv1x1`` and Winograd steps write into buffers instead of allocating: the block's
    output into the engine's (``out=``, reused from call to call by liveness), its intermediates into
    scratch this object keeps, one buffer per (shape, role), shared by the program's blocks (a
    program runs one call at a time). Fresh multi-MB tensors on every call cost the kernel's page
    faults (measured: about 10% of a batch-4 forward pass on the 2-vCPU EPYC).
    """

    def __init__(self, winograd: bool, conv1x1: bool = False):
        self.winograd = winograd
        self.conv1x1 = conv1x1
        self._upsample_add = (torch.ops.shg_fast.upsample_add if "cpu" in UPSAMPLE_ADD.impls
                              else ops.upsample_add_reference)
        self._scratch: dict[tuple, torch.Tensor] = {}

    def scratch(self, shape, role: str, dtype: torch.dtype) -> torch.Tensor:
        """The channels_last buffer of ``shape`` for intermediate ``role`` (the same tensor for every block)."""
        key = (tuple(shape), role, dtype)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return self._scratch[key]

    def conv(self, w: torch.Tensor, b: torch.Tensor, x_shape, *, stride: int = 1, padding: int | None = None,
             relu: bool = False, add: bool = False, clamp: tuple | None = None) -> tuple[Callable, Tactic]:
        """``f(x, out=None)`` (``f(x, add, out=None)`` with ``add``) running this conv on inputs of ``x_shape``,
        and its tactic.

        ``clamp``: per-input-channel ``(lo, hi)`` bounds, each ``(1, C_in, 1, 1)``, applied to x first.
        ``out``: a channels_last buffer the conv writes into where its kernel can (``conv1x1``,
        Winograd); the result is what ``f`` returns.
        """
        pad = [w.shape[-1] // 2 if padding is None else padding] * 2
        if w.shape[-1] == 1 and stride == 1 and pad[0] == 0 and w.dtype == torch.float32 and self.conv1x1:
            return self._conv1x1(w, b, relu, add, clamp)
        if clamp is not None:
            conv, tactic = self.conv(w, b, x_shape, stride=stride, padding=padding, relu=relu, add=add)
            lo, hi = clamp
            tactic = dataclasses.replace(tactic, reason=tactic.reason + "; the clamp prologue a separate pass")
            if add:
                return (lambda x, a, out=None: conv(torch.clamp(x, lo, hi), a, out=out)), tactic
            return (lambda x, out=None: conv(torch.clamp(x, lo, hi), out=out)), tactic
        if (w.shape[-1] == 3 and stride == 1 and pad[0] == 1 and not add and w.dtype == torch.float32
                and min(x_shape[-2:]) >= WINOGRAD_MIN_SIDE and self.winograd):
            weight_t, winograd = ops.winograd_weight(w), ops.winograd_conv3x3
            return (lambda x, out=None: winograd(x, weight_t, b, relu=relu, out=out)), Tactic(
                "winograd", f"3x3 stride-1 conv on a map of at least {WINOGRAD_MIN_SIDE}x{WINOGRAD_MIN_SIDE}: "
                "Winograd F(4x4, 3x3) on weights transformed once, written into the step's buffer")
        if w.shape[-1] == 1 and x_shape[-1] * x_shape[-2] <= SMALL_MAP_PIXELS:
            # ATen's direct path beats oneDNN's per-call overhead on tiny maps
            tactic = Tactic("aten", f"1x1 conv on a map of at most {SMALL_MAP_PIXELS} pixels")
            if add:
                return (lambda x, a, out=None: F.conv2d(x, w, b).add_(a)), tactic
            if relu:
                return (lambda x, out=None: F.conv2d(x, w, b).relu_()), tactic
            return (lambda x, out=None: F.conv2d(x, w, b)), tactic
        packed = _onednn_pack(w, pad, stride, x_shape)
        tactic = Tactic("mkldnn", f"oneDNN conv, {w.dtype} weights prepacked for this input shape, "
                        + ("add fused" if add else "then ReLU in place" if relu else "bias fused"))
        if add:
            return (lambda x, a, out=None: _onednn_conv_add(x, a, packed, b, pad, stride)), tactic

        def conv(x, out=None):
            y = _onednn_conv(x, packed, b, pad, stride)
            # ReLU as a separate ATen pass: oneDNN's fused ReLU post-op maps NaN to 0 (a silent wrong result).
            return y.relu_() if relu else y

        return conv, tactic

    @staticmethod
    def _conv1x1(w: torch.Tensor, b: torch.Tensor, relu: bool, add: bool, clamp: tuple | None):
        """A float32 1x1 conv on shg_fast::conv1x1, with the clamp, bias, add(s) and ReLU fused.

        With ``add`` the callable is ``f(x, a, low=None, out=None)``: ``low``, the half-size lower
        branch, is added nearest-upsampled in the same epilogue.
        """
        packed, c_out = conv1x1_weight(w.contiguous()), w.shape[0]
        bounds = None if clamp is None else tuple(t.reshape(-1).contiguous() for t in clamp)
        fused = [name for name, on in (("clamp prologue", clamp is not None), ("bias", True),
                                       ("residual and upsampled adds", add), ("ReLU", relu)) if on]
        tactic = Tactic("conv1x1", "1x1 conv as a register-blocked GEMM on weights packed once, "
                        + ", ".join(fused) + " fused, written into the step's buffer")
        if add:
            def conv_add(x, a, low=None, out=None):
                return conv1x1(x, packed, c_out, b, clamp=bounds, add=a, add_low=low, relu=relu, out=out)
            return conv_add, tactic
        return (lambda x, out=None: conv1x1(x, packed, c_out, b, clamp=bounds, relu=relu, out=out)), tactic

    def block(self, block: FoldedResidual, x_shape, upsample: bool) -> tuple[Callable, Tactic]:
        """``f(x, out=None)`` (``f(x, low, out=None)`` with ``upsample``) running one residual block, and its tactic.

        ``out``: a channels_last buffer for the block's output (used where conv3 is a ``conv1x1``).
        """
        lo, hi, w1, b1 = _clamp_prologue(block)
        mid_shape = (x_shape[0], block.mid_channels, *x_shape[2:])
        out_shape = (x_shape[0], block.out_channels, *x_shape[2:])
        conv1, t1 = self.conv(w1, b1, x_shape, relu=True, clamp=(lo, hi))
        conv2, t2 = self.conv(block.w2, block.b2, mid_shape, relu=True)
        conv3, t3 = self.conv(block.w3, block.b3, mid_shape, add=True)
        skip_conv, ts = (None, None) if block.ws is None else self.conv(block.ws, block.bs, x_shape)
        dtype = block.w1.dtype
        writes = {"conv1x1", "winograd"}  # the tactics that write into a given buffer (others allocate)
        h1 = self.scratch(mid_shape, "conv1", dtype) if t1.backend in writes else None
        h2 = self.scratch(mid_shape, "conv2", dtype) if t2.backend in writes else None
        skip_buf = self.scratch(out_shape, "skip", dtype) if ts is not None and ts.backend in writes else None
        upsample_add = self._upsample_add
        fused_low = t3.backend == "conv1x1"
        config = {"conv1": t1.backend, "conv2": t2.backend, "conv3": t3.backend}
        if ts is not None:
            config["skip"] = ts.backend
        tactic = Tactic("mkldnn", f"{dtype} CPU runner: BN-ReLU prologue as one clamp (fused into conv1 where it is a "
                        "conv1x1), convs as configured, the skip (and the upsampled lower branch where conv3 is a "
                        "conv1x1) added in conv3", config)

        def run(x: torch.Tensor, low: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
            h = conv2(conv1(x, out=h1), out=h2)
            skip = x if skip_conv is None else skip_conv(x, out=skip_buf)
            if low is None:
                return conv3(h, skip, out=out)
            if fused_low:
                return conv3(h, skip, low, out=out)
            return conv3(h, upsample_add(low, skip), out=out)

        if not upsample:
            return (lambda x, out=None: run(x, out=out)), tactic
        return run, tactic


def _clamp_prologue(block: FoldedResidual) -> tuple:
    """The prologue ``relu(s*x + t)`` before the 1x1 conv1 as one clamp, s and t moved into conv1.

    With ``c = -t/s``: ``relu(s*x + t) = s*(clamp(x, lo, hi) - c)``, ``lo = c, hi = inf`` where
    ``s > 0`` and ``lo = -inf, hi = c`` where ``s < 0`` (``s = 0`` gives the constant
    ``relu(t)``). ``s`` scales conv1's input channels and the constant part goes into its
    bias (exact: a 1x1 conv has no padding), so the prologue is a single pass over x. Computed
    in float32 (from a bfloat16 block's values too) and rounded once to the block's dtype.
    """
    dtype = block.w1.dtype
    s, t = block.in_scale.float(), block.in_shift.float()
    nonzero = s != 0
    c = torch.where(nonzero, -t / torch.where(nonzero, s, torch.ones_like(s)), torch.zeros_like(s))
    inf = torch.full_like(s, float("inf"))
    lo = torch.where(s > 0, c, torch.where(nonzero, -inf, c))
    hi = torch.where(s < 0, c, torch.where(nonzero, inf, c))
    const = torch.where(nonzero, -s * c, t.clamp_min(0))
    w1_32 = block.w1.float()
    w1 = (w1_32 * s.view(1, -1, 1, 1)).to(dtype).contiguous(memory_format=torch.channels_last)
    b1 = (block.b1.float() + w1_32.flatten(1) @ const).to(dtype)
    return lo.view(1, -1, 1, 1).to(dtype), hi.view(1, -1, 1, 1).to(dtype), w1, b1
