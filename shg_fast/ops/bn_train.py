"""Training-mode BatchNorm+ReLU pieces: batch statistics, ``relu(BN(x))``, its backward, and the max-pool's.

Three functions, each with a Triton implementation (``shg_fast/kernels/bn_train.py``, on CUDA tensors, or
on CPU ones in Triton's interpreter for testing) and a pure-PyTorch twin written to mirror it:

* :func:`batch_stats` -- per-channel mean and biased variance of ``x`` (N, C, H, W);
* :func:`bn_relu` -- ``relu(x * scale + shift)`` per channel, cast to a given dtype;
* :func:`bn_relu_backward` -- ``dx, d weight, d bias`` of ``relu(BN(x))`` on batch statistics,
  given the gradient of the ReLU output, from ``x`` and the statistics alone (nothing of the
  forward's activations is needed).

:func:`bn_relu` and :func:`bn_relu_backward` also have C++ CPU kernels (``csrc/cpu/bn_train.cpp``,
backend ``"cpu"``: NCHW-contiguous tensors, one pass forward, two passes backward), and so has
:func:`max_pool2x2_backward`, the 2x2/2 max-pool's input gradient with the argmax recomputed from
the input (twin: ATen's own ``max_pool2d_with_indices`` and its backward).

All arithmetic is float32 (float64 for float64 inputs). ``backend="auto"`` takes Triton for CUDA
tensors, the C++ kernels for CPU tensors they accept (see :func:`cpu_reasons`), the twin otherwise.
The memory-efficient training path (:mod:`shg_fast.training_ops`) asks :func:`training_backend`.
"""

from __future__ import annotations

import torch

from .. import _extension
from ..backends import triton_interpreter

__all__ = ["batch_stats", "bn_relu", "bn_relu_backward", "max_pool2x2_backward", "batch_stats_reference",
           "bn_relu_reference", "bn_relu_backward_reference", "max_pool2x2_backward_reference", "triton_reasons",
           "cpu_reasons", "training_backend", "BN_DTYPES"]

#: Storage dtypes of the BN input the kernels read (statistics are float32 whatever it is).
BN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:
    import triton

    from shg_fast.kernels.bn_train import (BN_BLOCK_C, BN_BLOCK_M, BN_SPLITS, bn_partial_sums_kernel,
                                           bn_relu_kernel)
    from .triton_backend import _launcher
except Exception as exc:  # a missing or broken Triton only makes the kernels unavailable
    _IMPORT_ERROR: str | None = f"Triton kernels failed to import ({type(exc).__name__}: {exc})"
else:
    _IMPORT_ERROR = None


def triton_reasons(x: torch.Tensor) -> list[str]:
    """Why the Triton kernels cannot run on ``x`` (empty when they can)."""
    reasons = [] if _IMPORT_ERROR is None else [_IMPORT_ERROR]
    if x.device.type != "cuda" and not (x.device.type == "cpu" and triton_interpreter()):
        reasons.append(f"tensors are on {x.device.type}; the kernels run on CUDA (or CPU with TRITON_INTERPRET=1)")
    if x.dtype not in BN_DTYPES:
        reasons.append(f"dtype {x.dtype} is not one of {BN_DTYPES}")
    if x.dim() != 4:
        reasons.append(f"expected a 4-D tensor, got shape {tuple(x.shape)}")
    return reasons


def cpu_reasons(x: torch.Tensor, other: torch.dtype | None = None, op: str = "bn_relu") -> list[str]:
    """Why the C++ CPU kernel of ``op`` cannot run on ``x`` (empty when it can).

    ``other`` is the second dtype of the call (bn_relu's output, bn_relu_backward's gradient):
    x's own, or a 16-bit type with float32 ``x``.
    """
    reasons = []
    if not _extension.has_kernel(op, "CPU"):
        reasons.append(_extension.load_error() or f"the built extension has no CPU kernel for shg_fast::{op}")
    if x.device.type != "cpu":
        reasons.append(f"tensors are on {x.device.type}; the C++ kernels run on the CPU")
    if x.dim() != 4 or not x.is_contiguous():
        reasons.append("x is not an NCHW-contiguous 4-D tensor")
    if x.dtype not in BN_DTYPES + (torch.float64,):
        reasons.append(f"dtype {x.dtype} is not supported")
    other = x.dtype if other is None else other
    if other != x.dtype and not (x.dtype == torch.float32 and other in (torch.float16, torch.bfloat16)):
        reasons.append(f"dtype pair {x.dtype} / {other} (the second must be x's, or 16-bit for float32 x)")
    return reasons


def _choose(x: torch.Tensor, backend: str, other: torch.dtype | None = None, op: str = "bn_relu") -> str:
    """The implementation a call runs: "triton", "cpu" or "reference" (decided before any kernel runs)."""
    if backend not in ("auto", "triton", "cpu", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton', 'cpu' or 'reference', got {backend!r}")
    if backend == "auto":
        if x.device.type == "cuda":
            return "reference" if triton_reasons(x) else "triton"
        return "reference" if cpu_reasons(x, other, op) else "cpu"
    reasons = {"triton": triton_reasons, "cpu": lambda t: cpu_reasons(t, other, op)}.get(backend, lambda t: [])(x)
    if reasons:
        raise RuntimeError(f"the {backend} backend cannot run here: " + "; ".join(reasons))
    return backend


def training_backend(x: torch.Tensor, dtype: torch.dtype) -> str:
    """Which kernels the memory-efficient training path uses for a BN input ``x`` whose ReLU output is
    ``dtype``: "triton" (CUDA), "cpu" (the C++ kernels) or "aten" (ATen's composite ops)."""
    if x.device.type == "cuda":
        return "aten" if triton_reasons(x) else "triton"
    return "aten" if cpu_reasons(x, dtype) else "cpu"


def _ncs(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when (H, W) merge into one spatial stride (NCHW or channels_last), else a contiguous copy."""
    h, w = t.shape[-2:]
    if h == 1 or w == 1 or t.stride(2) == t.stride(3) * w:
        return t
    return t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(n, c, s) strides of a tensor that :func:`_ncs` accepted."""
    s = t.stride(3) if t.shape[3] > 1 else t.stride(2)
    return t.stride(0), t.stride(1), s


def _positions(x: torch.Tensor) -> int:
    return x.shape[0] * x.shape[2] * x.shape[3]


def _check_positions(x: torch.Tensor) -> None:
    if _positions(x) < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------- twins

def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def batch_stats_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of :func:`batch_stats`: mean and biased variance per channel, around a sample of each channel."""
    xf = x.to(_acc(x))
    center = xf[0, :, 0, 0]
    d = xf - center.view(1, -1, 1, 1)
    m = _positions(x)
    s1, s2 = d.sum((0, 2, 3)), (d * d).sum((0, 2, 3))
    return center + s1 / m, (s2 / m - (s1 / m) ** 2).clamp_min(0)


def bn_relu_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """Twin of :func:`bn_relu`: ``relu(x * scale + shift)`` computed in float32 (or float64), cast to ``dtype``."""
    y = x.to(_acc(x)) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    return torch.relu(y).to(x.dtype if dtype is None else dtype)


def bn_relu_backward_reference(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               mean: torch.Tensor, invstd: torch.Tensor):
    """Twin of :func:`bn_relu_backward`: ``(dx, d weight, d bias)`` from the closed form of BN's backward."""
    acc = _acc(x)
    xf, view = x.to(acc), (1, -1, 1, 1)
    scale = weight.to(acc) * invstd
    y = xf * scale.view(view) + (bias.to(acc) - mean * scale).view(view)
    t = torch.where(y > 0, grad.to(acc), 0)
    xhat = (xf - mean.view(view)) * invstd.view(view)
    m = _positions(x)
    dbias, dweight = t.sum((0, 2, 3)), (t * xhat).sum((0, 2, 3))
    dx = scale.view(view) * (t - (dbias / m).view(view) - xhat * (dweight / m).view(view))
    return dx.to(x.dtype), dweight.to(weight.dtype), dbias.to(bias.dtype)


def max_pool2x2_backward_reference(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`max_pool2x2_backward`: ATen's max-pool with indices, then its backward."""
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
    return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)


# ----------------------------------------------------------------------------------------------- launchers

def _acc_vectors(x: torch.Tensor, *vectors: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel vectors as the C++ kernels take them: contiguous, float32 (float64 for float64 x)."""
    return [v.to(_acc(x)).contiguous() for v in vectors]


def _partial_sums(x: torch.Tensor, center: torch.Tensor, g: torch.Tensor | None = None,
                  scale: torch.Tensor | None = None, shift: torch.Tensor | None = None):
    """Launch bn_partial_sums_kernel; returns the two per-channel sums (float32, slices added)."""
    n, c, h, w = x.shape
    splits = max(1, min(BN_SPLITS, triton.cdiv(n * h * w, BN_BLOCK_M)))
    sum1 = torch.full((splits, c), float("nan"), device=x.device, dtype=torch.float32)
    sum2 = torch.full((splits, c), float("nan"), device=x.device, dtype=torch.float32)
    backward = g is not None
    g_ = g if backward else x
    _launcher(bn_partial_sums_kernel)[(triton.cdiv(c, BN_BLOCK_C), splits)](
        x, g_, scale if backward else center, shift if backward else center, center, sum1, sum2,
        n * h * w, c, h * w, *_strides(x), *_strides(g_),
        SPLITS=splits, BACKWARD=backward, BLOCK_M=BN_BLOCK_M, BLOCK_C=BN_BLOCK_C)
    return sum1.sum(0), sum2.sum(0)


def _elementwise(x: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                 g: torch.Tensor | None = None, coefs: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Launch bn_relu_kernel (forward activation, or dx when ``g`` and ``coefs`` are given)."""
    n, c, h, w = x.shape
    backward = g is not None
    g_ = g if backward else x
    mean, a, b, k = coefs if backward else (scale,) * 4
    grid = (triton.cdiv(n * h * w, BN_BLOCK_M), triton.cdiv(c, BN_BLOCK_C))
    _launcher(bn_relu_kernel)[grid](
        x, g_, out, scale, shift, mean, a, b, k, n * h * w, c, h * w,
        *_strides(x), *_strides(g_), *_strides(out),
        BACKWARD=backward, BLOCK_M=BN_BLOCK_M, BLOCK_C=BN_BLOCK_C)
    return out


# ----------------------------------------------------------------------------------------------- public

def batch_stats(x: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of ``x`` (N, C, H, W), float32 (float64 for float64 input).

    Raises ValueError, as BatchNorm does in training, when there is one value per channel.
    """
    _check_positions(x)
    if backend == "cpu":
        raise ValueError("batch_stats has no C++ kernel: backend must be 'auto', 'triton' or 'reference'")
    if _choose(x, backend) != "triton":
        return batch_stats_reference(x)
    x = _ncs(x)
    center = x[0, :, 0, 0].float().contiguous()
    s1, s2 = _partial_sums(x, center)
    m = _positions(x)
    return center + s1 / m, (s2 / m - (s1 / m) ** 2).clamp_min(0)


def bn_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype | None = None, *,
            backend: str = "auto") -> torch.Tensor:
    """``relu(x * scale + shift)`` per channel (``scale``/``shift`` float32 (C,)), in ``dtype`` (default x's).

    The output has x's memory format. NaN in x stays NaN.
    """
    out_dtype = x.dtype if dtype is None else dtype
    chosen = _choose(x, backend, out_dtype)
    if chosen == "reference":
        return bn_relu_reference(x, scale, shift, dtype)
    if chosen == "cpu":
        return torch.ops.shg_fast.bn_relu(x, *_acc_vectors(x, scale, shift), out_dtype)
    x = _ncs(x)
    out = torch.empty_like(x, dtype=x.dtype if dtype is None else dtype).fill_(float("nan"))
    return _elementwise(x, out, scale.float().contiguous(), shift.float().contiguous())


def bn_relu_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     mean: torch.Tensor, invstd: torch.Tensor, *, backend: str = "auto"):
    """Gradients of ``relu(batch_norm(x, weight, bias))`` on batch statistics ``mean``/``invstd``.

    ``grad`` is the gradient of the ReLU output. The ReLU mask and the normalised input are
    recomputed from ``x``. Returns ``(dx, d weight, d bias)``.
    """
    chosen = _choose(x, backend, grad.dtype, "bn_relu_backward")
    if chosen == "reference":
        return bn_relu_backward_reference(grad, x, weight, bias, mean, invstd)
    if chosen == "cpu":
        mean, invstd = _acc_vectors(x, mean, invstd)
        scale = weight.to(invstd.dtype) * invstd
        shift = bias.to(invstd.dtype) - mean * scale
        dx, dweight, dbias = torch.ops.shg_fast.bn_relu_backward(grad.contiguous(), x, scale, shift, mean, invstd)
        return dx, dweight.to(weight.dtype), dbias.to(bias.dtype)
    x, grad = _ncs(x), _ncs(grad)
    mean, invstd = mean.float().contiguous(), invstd.float().contiguous()
    scale = (weight.float() * invstd).contiguous()
    shift = (bias.float() - mean * scale).contiguous()
    sum_t, sum_td = _partial_sums(x, mean, grad, scale, shift)
    m = _positions(x)
    coef_b = scale * sum_t / m
    coef_c = scale * invstd * invstd * sum_td / m
    dx = torch.empty_like(x).fill_(float("nan"))
    _elementwise(x, dx, scale, shift, grad, (mean, scale, coef_b.contiguous(), coef_c.contiguous()))
    return dx, (invstd * sum_td).to(weight.dtype), sum_t.to(bias.dtype)


def max_pool2x2_backward(grad: torch.Tensor, x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Input gradient of ``F.max_pool2d(x, 2, 2)`` given the output's gradient ``grad``, with no index map:
    the argmax is recomputed from ``x`` as ATen picks it (first maximum of each window; a NaN wins).

    Backends "cpu" (the C++ kernel: NCHW-contiguous CPU tensors) and "reference" (ATen's pair); "auto"
    takes the C++ kernel where it can run. Every element of the result is written (zeros outside the
    argmax and in a dropped last row/column).
    """
    if backend not in ("auto", "cpu", "reference"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'reference', got {backend!r}")
    reasons = cpu_reasons(x, op="max_pool2x2_backward") if backend != "reference" else ["reference asked"]
    if backend == "cpu" and reasons:
        raise RuntimeError("the cpu backend cannot run here: " + "; ".join(reasons))
    if reasons:
        return max_pool2x2_backward_reference(grad, x)
    return torch.ops.shg_fast.max_pool2x2_backward(grad.contiguous(), x)


def _register_fakes() -> None:
    """Fake kernels of the extension's training ops, so torch.compile can trace the training path."""

    @torch.library.register_fake("shg_fast::bn_relu")
    def _(x, scale, shift, dtype):
        return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)

    @torch.library.register_fake("shg_fast::bn_relu_backward")
    def _(grad, x, scale, shift, mean, invstd):
        return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
                torch.empty_like(scale))

    @torch.library.register_fake("shg_fast::max_pool2x2_backward")
    def _(grad, x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)


if _extension.has_kernel("bn_relu", "CPU"):
    _register_fakes()
