"""Training-mode BatchNorm+ReLU pieces: batch statistics, ``relu(BN(x))``, and its backward.

Three functions, each with a Triton implementation (``kernels/bn_train.py``, on CUDA tensors, or
on CPU ones in Triton's interpreter for testing) and a pure-PyTorch twin written to mirror it:

* :func:`batch_stats` -- per-channel mean and biased variance of ``x`` (N, C, H, W);
* :func:`bn_relu` -- ``relu(x * scale + shift)`` per channel, cast to a given dtype;
* :func:`bn_relu_backward` -- ``dx, d weight, d bias`` of ``relu(BN(x))`` on batch statistics,
  given the gradient of the ReLU output, from ``x`` and the statistics alone (nothing of the
  forward's activations is needed).

All arithmetic is float32 (float64 for float64 inputs in the twins). ``backend="auto"`` takes
Triton for CUDA tensors and the twin otherwise; the memory-efficient training path
(:mod:`shg_fast.training_ops`) calls these on CUDA and ATen's own CPU kernels on the CPU.
"""

from __future__ import annotations

import torch

from ..backends import triton_interpreter

__all__ = ["batch_stats", "bn_relu", "bn_relu_backward", "batch_stats_reference", "bn_relu_reference",
           "bn_relu_backward_reference", "triton_reasons", "BN_DTYPES"]

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


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "reference":
        return False
    reasons = triton_reasons(x)
    if backend == "triton" and reasons:
        raise RuntimeError("the triton backend cannot run here: " + "; ".join(reasons))
    return not reasons and (backend == "triton" or x.device.type == "cuda")


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


# ----------------------------------------------------------------------------------------------- launchers

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
    if not _use_triton(x, backend):
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
    if not _use_triton(x, backend):
        return bn_relu_reference(x, scale, shift, dtype)
    x = _ncs(x)
    out = torch.empty_like(x, dtype=x.dtype if dtype is None else dtype).fill_(float("nan"))
    return _elementwise(x, out, scale.float().contiguous(), shift.float().contiguous())


def bn_relu_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     mean: torch.Tensor, invstd: torch.Tensor, *, backend: str = "auto"):
    """Gradients of ``relu(batch_norm(x, weight, bias))`` on batch statistics ``mean``/``invstd``.

    ``grad`` is the gradient of the ReLU output. The ReLU mask and the normalised input are
    recomputed from ``x``. Returns ``(dx, d weight, d bias)``.
    """
    if not _use_triton(x, backend):
        return bn_relu_backward_reference(grad, x, weight, bias, mean, invstd)
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
