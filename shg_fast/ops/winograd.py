"""3x3 convolution (stride 1, padding 1) by Winograd F(4x4, 3x3) on the CPU.

The C++ extension's kernel (csrc/cpu/winograd.cpp) does a quarter of the direct convolution's
multiplications: it transforms 6x6 input tiles, runs one GEMM per tile position on weights
transformed once by :func:`winograd_weight`, and transforms back with bias and ReLU fused. The
float32 CPU runner of the fused plan uses it for the residual blocks' 3x3 convolutions
(``SHG_FAST_WINOGRAD=0`` turns that off). float32 results are within about twice the rounding
error of a direct convolution (see ``tests/ops/test_winograd.py``); float64 is exact to rounding.

Inference only (no autograd), CPU only, float32 and float64. Each calling thread keeps one
scratch buffer of at most 16 MB (more only when a single 6x6 tile of transformed input and
output needs more) for reuse: larger maps and batches go through in chunks of tiles.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from .. import _extension
from ._cpu_checks import check_cpu_tensor, require_cpu_kernel

__all__ = ["winograd_available", "winograd_isa", "winograd_weight", "winograd_conv3x3", "winograd_conv3x3_reference",
           "check_winograd_conv3x3"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)
POSITIONS = 36  # 6x6 input tile


@functools.lru_cache(maxsize=None)
def winograd_available() -> bool:
    """True when the extension's CPU Winograd kernels are loaded (checked once per process)."""
    return _extension.has_kernel("winograd_conv3x3", "CPU")


def winograd_isa() -> str | None:
    """The instruction set the transforms run with on this CPU: ``"avx2+fma"`` or ``"baseline"``.

    ``SHG_FAST_CPU_BASELINE=1`` (read once per process) forces ``"baseline"``. None without the kernel.
    """
    return str(torch.ops.shg_fast.winograd_isa()) if winograd_available() else None


def _require_kernel() -> None:
    require_cpu_kernel("winograd_conv3x3", winograd_available())


def _check_tensor(op: str, name: str, t: torch.Tensor, dim: int) -> None:
    check_cpu_tensor(op, name, t, dim, SUPPORTED_DTYPES)


def check_winograd_conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Raise TypeError/ValueError unless ``(x, weight_t, bias)`` meet :func:`winograd_conv3x3`'s contract."""
    op = "winograd_conv3x3"
    _check_tensor(op, "x", x, 4)
    _check_tensor(op, "weight_t", weight_t, 3)
    if weight_t.shape[0] != POSITIONS or weight_t.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: weight_t must be ({POSITIONS}, C_in={x.shape[1]}, C_out) from winograd_weight, "
                         f"got {tuple(weight_t.shape)}")
    if weight_t.dtype != x.dtype:
        raise TypeError(f"{op}: weight_t dtype {weight_t.dtype} differs from x {x.dtype}")
    if bias is not None:
        _check_tensor(op, "bias", bias, 1)
        if bias.shape[0] != weight_t.shape[2] or bias.dtype != x.dtype:
            raise ValueError(f"{op}: bias must be ({weight_t.shape[2]},) {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """Transform ``(C_out, C_in, 3, 3)`` conv weights to the ``(36, C_in, C_out)`` Winograd domain.

    Computed in float64 and returned in ``weight``'s dtype; do it once per set of weights.
    """
    _check_tensor("winograd_weight", "weight", weight, 4)
    if tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight: weight must be (C_out, C_in, 3, 3), got {tuple(weight.shape)}")
    _require_kernel()
    return torch.ops.shg_fast.winograd_weight(weight)


def winograd_conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None,
                     relu: bool = False, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` (then ReLU if ``relu``) with ``weight_t = winograd_weight(weight)``.

    Args:
        x: ``(N, C_in, H, W)`` float32/float64 CPU input; channels_last runs without a copy.
        weight_t: ``(36, C_in, C_out)`` transformed weights in ``x``'s dtype.
        bias: optional ``(C_out,)``.
        relu: apply ReLU after the bias.
        out: optional ``(N, C_out, H, W)`` channels_last-contiguous buffer in ``x``'s dtype to write
            into (it must not overlap ``x``).

    Returns ``out`` when given, else a new ``(N, C_out, H, W)`` tensor, channels_last exactly when
    ``x`` is channels_last (and not also contiguous); NaN/Inf propagate as in the twin (a non-finite input pixel makes the 4x4
    output tiles whose 6x6 input tiles hold it non-finite). Raises
    :class:`~shg_fast.backends.BackendUnavailableError` without the extension, RuntimeError
    when an input requires grad with grad mode on (there is no backward).
    """
    check_winograd_conv3x3(x, weight_t, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight_t, bias)):
        raise RuntimeError("winograd_conv3x3 is inference only (no backward): an input requires grad; call it "
                           "under torch.no_grad() or use winograd_conv3x3_reference for gradients")
    _require_kernel()
    if out is None:
        return torch.ops.shg_fast.winograd_conv3x3(x, weight_t, bias, bool(relu))
    _check_tensor("winograd_conv3x3", "out", out, 4)
    expected = (x.shape[0], weight_t.shape[2], *x.shape[2:])
    if tuple(out.shape) != expected or out.dtype != x.dtype or not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"winograd_conv3x3: out must be {expected} {x.dtype} and channels_last-contiguous, got "
                         f"{tuple(out.shape)} {out.dtype} with strides {out.stride()}")
    torch.ops.shg_fast.winograd_conv3x3_out(x, weight_t, bias, bool(relu), out)
    return out


def winograd_conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                               relu: bool = False) -> torch.Tensor:
    """Pure-PyTorch twin: ``conv2d(x, weight, bias, padding=1)``, then ReLU if ``relu``."""
    y = F.conv2d(x, weight, bias, padding=1)
    return y.relu() if relu else y


def _register_library_op() -> None:
    """Fake kernels of the extension's Winograd ops (shapes only, for tracing)."""

    @torch.library.register_fake("shg_fast::winograd_weight")
    def _(weight):
        torch._check(weight.dim() == 4, lambda: "winograd_weight needs a 4-D weight")
        return weight.new_empty((POSITIONS, weight.shape[1], weight.shape[0]))

    @torch.library.register_fake("shg_fast::winograd_conv3x3_out")
    def _(x, weight_t, bias, relu, out):
        return None

    @torch.library.register_fake("shg_fast::winograd_conv3x3")
    def _(x, weight_t, bias, relu):
        torch._check(x.dim() == 4 and weight_t.dim() == 3, lambda: "winograd_conv3x3 needs 4-D x, 3-D weight_t")
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        n, _, h, w = x.shape
        return x.new_empty((n, weight_t.shape[2], h, w)).contiguous(memory_format=fmt)


if winograd_available():
    _register_library_op()
