"""1x1 convolution on the CPU with the residual block's prologue and epilogue fused.

The C++ extension's kernel (csrc/cpu/conv1x1.cpp) runs a 1x1 convolution over channels_last
activations as a register-blocked GEMM (6 pixels x 16 output channels per AVX2 micro-tile) on
weights packed once by :func:`conv1x1_weight`. Fused around it: a per-input-channel clamp (the
folded BN-ReLU prologue of a pre-activation block, :func:`shg_fast.cpu_runner._clamp_prologue`), the bias,
an added tensor (the residual), a nearest-upsampled half-size map (the hourglass's up-branch add)
and ReLU, so a block's 1x1 convs read and write each activation once. With ``out=`` the result is
written into a caller's buffer (the inference engine's, reused from call to call: no allocation,
so no page faults for fresh memory).
The float32 CPU runner of the fused plan uses it for every 1x1 conv (``SHG_FAST_CONV1X1=0`` runs
them on oneDNN instead).

Inference only (no autograd), CPU only, float32. Each thread keeps one scratch buffer of 96 pixels
x C_in floats for the clamped input, reused across calls.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from .. import _extension
from ._cpu_checks import check_cpu_tensor, require_cpu_kernel

__all__ = ["conv1x1_available", "conv1x1_weight", "conv1x1", "conv1x1_reference", "check_conv1x1"]

PANEL = 16  # output channels per packed weight panel


@functools.lru_cache(maxsize=None)
def conv1x1_available() -> bool:
    """True when the extension's CPU 1x1 conv kernel is loaded (checked once per process)."""
    return _extension.has_kernel("conv1x1", "CPU")


def _require_kernel() -> None:
    require_cpu_kernel("conv1x1", conv1x1_available())


def _check_tensor(name: str, t, dim: int) -> None:
    check_cpu_tensor("conv1x1", name, t, dim, (torch.float32,))


def check_conv1x1(x: torch.Tensor, weight_p: torch.Tensor, out_channels: int, bias: torch.Tensor | None = None,
                  clamp: tuple[torch.Tensor, torch.Tensor] | None = None, add: torch.Tensor | None = None,
                  add_low: torch.Tensor | None = None, out: torch.Tensor | None = None) -> None:
    """Raise TypeError/ValueError unless the arguments meet :func:`conv1x1`'s contract."""
    _check_tensor("x", x, 4)
    _check_tensor("weight_p", weight_p, 3)
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"conv1x1: out_channels must be a positive int, got {out_channels!r}")
    panels = -(-out_channels // PANEL)
    if tuple(weight_p.shape) != (panels, x.shape[1], PANEL):
        raise ValueError(f"conv1x1: weight_p must be ({panels}, C_in={x.shape[1]}, {PANEL}) from conv1x1_weight for "
                         f"{out_channels} output channels, got {tuple(weight_p.shape)}")
    vectors = [("bias", bias, out_channels)]
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError("conv1x1: clamp must be a (lo, hi) pair of tensors")
        vectors += [("clamp lo", clamp[0], x.shape[1]), ("clamp hi", clamp[1], x.shape[1])]
    for name, t, size in vectors:
        if t is not None:
            _check_tensor(name, t, 1)
            if t.shape[0] != size:
                raise ValueError(f"conv1x1: {name} must have {size} elements, got {t.shape[0]}")
    expected = (x.shape[0], out_channels, *x.shape[2:])
    if add is not None:
        _check_tensor("add", add, 4)
        if tuple(add.shape) != expected:
            raise ValueError(f"conv1x1: add must be {expected}, got {tuple(add.shape)}")
    if add_low is not None:
        _check_tensor("add_low", add_low, 4)
        half = (x.shape[0], out_channels, (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2)
        if tuple(add_low.shape) != half:
            raise ValueError(f"conv1x1: add_low must be {half}, got {tuple(add_low.shape)}")
    if out is not None:
        _check_tensor("out", out, 4)
        if tuple(out.shape) != expected or not out.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"conv1x1: out must be {expected} and channels_last-contiguous, got "
                             f"{tuple(out.shape)} with strides {out.stride()}")


def conv1x1_weight(weight: torch.Tensor) -> torch.Tensor:
    """Pack ``(C_out, C_in, 1, 1)`` float32 weights into ``(ceil(C_out / 16), C_in, 16)`` panels (zero past C_out).

    Do it once per set of weights; :func:`conv1x1` needs ``out_channels = C_out`` with it.
    """
    _check_tensor("weight", weight, 4)
    if tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"conv1x1_weight: weight must be (C_out, C_in, 1, 1), got {tuple(weight.shape)}")
    _require_kernel()
    return torch.ops.shg_fast.conv1x1_weight(weight)


def conv1x1(x: torch.Tensor, weight_p: torch.Tensor, out_channels: int, bias: torch.Tensor | None = None, *,
            clamp: tuple[torch.Tensor, torch.Tensor] | None = None, add: torch.Tensor | None = None,
            add_low: torch.Tensor | None = None, relu: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(clamp(x, lo, hi), weight, bias) + add + up(add_low))`` with ``weight_p = conv1x1_weight(weight)``.

    Args:
        x: ``(N, C_in, H, W)`` float32 CPU input; channels_last runs without a copy.
        weight_p: packed weights from :func:`conv1x1_weight`.
        out_channels: ``C_out`` of the packed weights.
        bias: optional ``(C_out,)``.
        clamp: optional ``(lo, hi)``, each ``(C_in,)``: x is clamped per input channel first (bounds
            may be infinite).
        add: optional ``(N, C_out, H, W)`` added after the bias.
        add_low: optional ``(N, C_out, ceil(H/2), ceil(W/2))`` added nearest-upsampled (``up``).
        relu: apply ReLU last.
        out: optional ``(N, C_out, H, W)`` channels_last-contiguous float32 buffer to write into; it
            must not overlap ``x`` or ``add_low`` (it may be ``add`` itself: an in-place residual add).

    Returns ``out`` when given, else a new ``(N, C_out, H, W)`` tensor, channels_last exactly when
    ``x`` is channels_last (and not also contiguous). NaN/Inf propagate as in the twin (a NaN stays NaN through clamp and ReLU). Raises
    :class:`~shg_fast.backends.BackendUnavailableError` without the extension, RuntimeError when an
    input requires grad with grad mode on (there is no backward).
    """
    check_conv1x1(x, weight_p, out_channels, bias, clamp, add, add_low, out)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight_p, bias, add, add_low, *(clamp or ()))):
        raise RuntimeError("conv1x1 is inference only (no backward): an input requires grad; call it under "
                           "torch.no_grad() or use conv1x1_reference for gradients")
    _require_kernel()
    lo, hi = clamp if clamp is not None else (None, None)
    if out is None:
        return torch.ops.shg_fast.conv1x1(x, weight_p, out_channels, bias, lo, hi, add, add_low, bool(relu))
    torch.ops.shg_fast.conv1x1_out(x, weight_p, out_channels, bias, lo, hi, add, add_low, bool(relu), out)
    return out


def conv1x1_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      clamp: tuple[torch.Tensor, torch.Tensor] | None = None, add: torch.Tensor | None = None,
                      add_low: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """Pure-PyTorch twin on the unpacked ``(C_out, C_in, 1, 1)`` weight."""
    if clamp is not None:
        x = torch.clamp(x, clamp[0].view(1, -1, 1, 1), clamp[1].view(1, -1, 1, 1))
    y = F.conv2d(x, weight, bias)
    if add is not None:
        y = y + add
    if add_low is not None:
        y = y + add_low.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :y.shape[2], :y.shape[3]]
    return y.relu() if relu else y


def _register_library_op() -> None:
    """Fake kernels of the extension's 1x1 conv ops (shapes only, for tracing)."""

    @torch.library.register_fake("shg_fast::conv1x1_weight")
    def _(weight):
        torch._check(weight.dim() == 4, lambda: "conv1x1_weight needs a 4-D weight")
        return weight.new_empty((-(-weight.shape[0] // PANEL), weight.shape[1], PANEL))

    @torch.library.register_fake("shg_fast::conv1x1_out")
    def _(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low, relu, out):
        return None

    @torch.library.register_fake("shg_fast::conv1x1")
    def _(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low, relu):
        torch._check(x.dim() == 4 and weight_p.dim() == 3, lambda: "conv1x1 needs 4-D x, 3-D weight_p")
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        n, _, h, w = x.shape
        return x.new_empty((n, out_channels, h, w)).contiguous(memory_format=fmt)


if conv1x1_available():
    _register_library_op()
