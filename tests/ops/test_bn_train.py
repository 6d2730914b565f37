"""The training-mode BN+ReLU kernels (interpreter on CPU) and their twins against float64 autograd."""

import pytest
import torch
from torch.nn import functional as F

from shg_fast.ops.bn_train import (batch_stats, batch_stats_reference, bn_relu, bn_relu_backward,
                                   bn_relu_backward_reference, bn_relu_reference, cpu_reasons, max_pool2x2_backward,
                                   max_pool2x2_backward_reference, training_backend)
from shg_fast.tolerances import assert_close_to_reference

# Odd channel counts around the 32-channel tile, odd spatial sizes, a batch of one.
SHAPES = [(2, 3, 5, 7), (1, 37, 4, 6), (3, 65, 3, 3), (2, 19, 1, 9)]
# Not bfloat16 in the interpreter: it truncates float32 -> bfloat16 instead of rounding (1 ulp off).
CASES = [("cpu", torch.float32), ("cpu", torch.float16),
         pytest.param("cuda", torch.float32, marks=pytest.mark.gpu),
         pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu)]
BACKENDS = ["triton", "reference"]


def make(shape, dtype, device, channels_last):
    gen = torch.Generator().manual_seed(sum(shape))
    n, c, h, w = shape
    x = (torch.randn(shape, generator=gen) * 2 + torch.linspace(-3, 3, c).view(1, c, 1, 1)).to(dtype)
    weight = torch.rand(c, generator=gen) + 0.5
    weight[::3] *= -1  # negative scales flip the ReLU side
    bias = torch.randn(c, generator=gen)
    grad = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    return tuple(t.to(device) for t in (x, weight, bias, grad))


def truth(x, weight, bias, grad):
    """float64 autograd through F.batch_norm + ReLU: output, dx, d weight, d bias, mean, var."""
    x64 = x.double().requires_grad_()
    w64, b64 = weight.double().requires_grad_(), bias.double().requires_grad_()
    out = torch.relu(F.batch_norm(x64, None, None, w64, b64, training=True, eps=1e-5))
    out.backward(grad.double())
    return out.detach(), x64.grad, w64.grad, b64.grad, x64.mean((0, 2, 3)), x64.var((0, 2, 3), unbiased=False)


def mode_of(dtype):
    return "float32" if dtype in (torch.float32, torch.float64) else str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_and_backward_match_float64(backend, device, dtype, shape, channels_last):
    x, weight, bias, grad = make(shape, dtype, device, channels_last)
    out64, dx64, dw64, db64, mean64, var64 = truth(x, weight, bias, grad)
    mean, var = batch_stats(x, backend=backend)
    assert mean.dtype == var.dtype == torch.float32
    assert_close_to_reference(mean, mean64, "float32")
    assert_close_to_reference(var, var64, "float32")
    invstd = torch.rsqrt(var + 1e-5)
    scale, shift = weight * invstd, bias - mean * weight * invstd
    out = bn_relu(x, scale, shift, backend=backend)
    assert out.dtype == dtype and out.shape == x.shape
    if channels_last and shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    # 16-bit results: at most the bound over the same computation rounded to that dtype.
    mode = mode_of(dtype)
    assert_close_to_reference(out, out64, mode, out64.to(dtype))
    dx, dw, db = bn_relu_backward(grad, x, weight, bias, mean, invstd, backend=backend)
    assert dx.dtype == dtype and dw.dtype == db.dtype == torch.float32
    assert_close_to_reference(dx, dx64, mode, dx64.to(dtype))
    assert_close_to_reference(dw, dw64, "float32" if dtype == torch.float32 else mode, dw64.to(dtype))
    assert_close_to_reference(db, db64, "float32" if dtype == torch.float32 else mode, db64.to(dtype))


def test_twins_in_float64_are_exact():
    x, weight, bias, grad = make((2, 5, 3, 4), torch.float64, "cpu", False)
    out64, dx64, dw64, db64, mean64, var64 = truth(x, weight, bias, grad)
    mean, var = batch_stats_reference(x)
    invstd = torch.rsqrt(var + 1e-5)
    assert_close_to_reference(bn_relu_reference(x, weight * invstd, bias - mean * weight * invstd), out64, "float64")
    for got, want in zip(bn_relu_backward_reference(grad, x, weight.double(), bias.double(), mean, invstd),
                         (dx64, dw64, db64)):
        assert_close_to_reference(got, want, "float64")


def test_statistics_stay_accurate_far_from_zero():
    """A large common offset: sum-of-squares statistics without a centre would cancel catastrophically."""
    x = torch.randn(4, 7, 8, 8) + 1e4
    mean, var = batch_stats(x, backend="triton")
    assert_close_to_reference(var, x.double().var((0, 2, 3), unbiased=False), "float32")
    assert_close_to_reference(mean, x.double().mean((0, 2, 3)), "float32")


def test_non_mergeable_strides_and_nan():
    x, weight, bias, grad = make((2, 6, 5, 8), torch.float32, "cpu", False)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # (H, W) strides that do not merge
    mean, var = batch_stats(xt, backend="triton")
    torch.testing.assert_close(mean, batch_stats_reference(x)[0])
    x[0, 1, 2, 3] = float("nan")
    out = bn_relu(x, weight, bias, backend="triton")
    assert torch.isnan(out[0, 1, 2, 3]) and torch.isnan(out).sum() == 1


def test_one_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_stats(torch.randn(1, 3, 1, 1))


def test_explicit_triton_backend_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="cannot run here"):
        batch_stats(torch.randn(2, 3, 4, 4), backend="triton")
    mean, _ = batch_stats(torch.randn(2, 3, 4, 4))  # auto takes the twin on the CPU
    assert mean.shape == (3,)


# ----------------------------------------------------------------------------------------------- C++ CPU kernels

CPU_REASONS = cpu_reasons(torch.empty(1, 1, 1, 1))
needs_cpu_kernels = pytest.mark.skipif(bool(CPU_REASONS), reason="; ".join(CPU_REASONS))


def _stats(x, weight, bias):
    mean, var = batch_stats_reference(x)
    invstd = torch.rsqrt(var + 1e-5)
    return mean, invstd, weight.to(invstd.dtype) * invstd, bias.to(invstd.dtype) - mean * weight * invstd


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES + [(2, 4, 40, 33)])  # a plane longer than the 16 accumulator lanes
def test_cpu_kernels_match_float64(dtype, shape):
    x, weight, bias, grad = make(shape, dtype, "cpu", False)
    if dtype == torch.float64:
        weight, bias = weight.double(), bias.double()
    out64, dx64, dw64, db64, _, _ = truth(x, weight, bias, grad)
    mean, invstd, scale, shift = _stats(x, weight, bias)
    mode = "float64" if dtype == torch.float64 else mode_of(dtype)
    out = bn_relu(x, scale, shift, backend="cpu")
    assert out.dtype == dtype and out.is_contiguous()
    assert_close_to_reference(out, out64, mode, out64.to(dtype))
    dx, dw, db = bn_relu_backward(grad, x, weight, bias, mean, invstd, backend="cpu")
    assert dx.dtype == dtype and dw.dtype == weight.dtype and db.dtype == bias.dtype
    assert_close_to_reference(dx, dx64, mode, dx64.to(dtype))
    sums_mode = "float32" if dtype == torch.float32 else mode
    assert_close_to_reference(dw, dw64, sums_mode, dw64.to(dtype))
    assert_close_to_reference(db, db64, sums_mode, db64.to(dtype))


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernels_mixed_dtypes_as_under_autocast(dtype):
    """float32 x: the activation written in a 16-bit dtype, the gradient read in one, as autocast runs them."""
    x, weight, bias, grad = make((3, 21, 9, 11), torch.float32, "cpu", False)
    mean, invstd, scale, shift = _stats(x, weight, bias)
    out = bn_relu(x, scale, shift, dtype, backend="cpu")
    assert out.dtype == dtype
    torch.testing.assert_close(out, bn_relu_reference(x, scale, shift, dtype), rtol=0, atol=0)
    g16 = grad.to(dtype)
    dx, dw, db = bn_relu_backward(g16, x, weight, bias, mean, invstd, backend="cpu")
    want = bn_relu_backward_reference(g16.double(), x.double(), weight, bias, mean.double(), invstd.double())
    assert dx.dtype == torch.float32
    for got, exp in zip((dx, dw, db), want):
        assert_close_to_reference(got, exp, "float32")


@needs_cpu_kernels
def test_cpu_kernels_nan_and_layout_rules():
    x, weight, bias, grad = make((2, 6, 5, 8), torch.float32, "cpu", False)
    mean, invstd, scale, shift = _stats(x, weight, bias)
    x[0, 1, 2, 3] = float("nan")
    out = bn_relu(x, scale, shift, backend="cpu")
    assert torch.isnan(out[0, 1, 2, 3]) and torch.isnan(out).sum() == 1
    cl = x.to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="cpu backend cannot run here.*NCHW"):
        bn_relu(cl, scale, shift, backend="cpu")
    torch.testing.assert_close(bn_relu(cl, scale, shift), bn_relu_reference(cl, scale, shift), equal_nan=True)
    with pytest.raises(RuntimeError, match="dtype pair"):
        bn_relu(x.double(), scale.double(), shift.double(), torch.bfloat16, backend="cpu")
    with pytest.raises(RuntimeError, match="scale must be a contiguous"):
        torch.ops.shg_fast.bn_relu(x, scale[:-1], shift, torch.float32)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        torch.ops.shg_fast.bn_relu_backward(grad[:1, :, :1, :1].contiguous(), x[:1, :, :1, :1].contiguous(),
                                            scale, shift, mean, invstd)
    assert training_backend(x, torch.float32) == "cpu" and training_backend(cl, torch.float32) == "aten"


def _pool_input(shape, dtype, gen):
    """Integer-valued inputs (ties in many windows), a few -inf, NaN (two in one window) and zeros."""
    x = torch.randint(-3, 4, shape, generator=gen).to(dtype)
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[:3]] = float("-inf")
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = float("nan")
    return x


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 5, 7, 9), (2, 2, 5, 4), (1, 1, 3, 2)])
def test_max_pool_backward_equals_aten(dtype, shape):
    """Exactly ATen's values (each element is either the output's gradient or zero), ties, NaN, -inf and
    the dropped last row/column of odd maps included."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = _pool_input(shape, dtype, gen)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen).to(dtype) + 5
    got = max_pool2x2_backward(grad, x, backend="cpu")
    torch.testing.assert_close(got, max_pool2x2_backward_reference(grad, x), rtol=0, atol=0)
    x64 = x.double().requires_grad_()
    torch.nn.functional.max_pool2d(x64, 2, 2).backward(grad.double())
    torch.testing.assert_close(got.double(), x64.grad, rtol=0, atol=0)


@needs_cpu_kernels
def test_max_pool_backward_checks_its_arguments():
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match=r"grad must be \(N, C, H // 2, W // 2\)"):
        torch.ops.shg_fast.max_pool2x2_backward(torch.randn(2, 3, 2, 3), x)
    with pytest.raises(RuntimeError, match="differs from x"):
        torch.ops.shg_fast.max_pool2x2_backward(torch.randn(2, 3, 3, 3).double(), x)
    with pytest.raises(RuntimeError, match="cpu backend cannot run here"):
        max_pool2x2_backward(torch.randn(2, 3, 3, 3), x.to(memory_format=torch.channels_last), backend="cpu")
    with pytest.raises(ValueError, match="backend must be"):
        max_pool2x2_backward(torch.randn(2, 3, 3, 3), x, backend="triton")
