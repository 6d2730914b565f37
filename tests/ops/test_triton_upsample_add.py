"""The triton backend of upsample_add against its float64 reference (interpreter on CPU)."""

import pytest
import torch

from shg_fast.ops import upsample_add, upsample_add_reference
from shg_fast.tolerances import assert_close_to_reference

from . import test_upsample_add as base

# (device, dtype). Not bfloat16 on CPU: the interpreter truncates float32 -> bfloat16
# instead of rounding to nearest, so its results are 1 ulp off where a GPU's are exact.
CASES = [
    ("cpu", torch.float32),
    ("cpu", torch.float16),
    pytest.param("cuda", torch.float32, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
]
SHAPES = [(1, 3, 5, 7), (2, 19, 8, 8), (1, 130, 4, 6), (1, 1, 1, 1), (1, 19, 64, 64)]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_float64_reference(device, dtype, shape, channels_last, poison_empty):
    low, skip = (t.to(device) for t in base.make(shape, dtype, channels_last))
    out = upsample_add(low, skip, backend="triton")
    truth = upsample_add_reference(low.double(), skip.double())
    assert out.shape == skip.shape and out.dtype == dtype and out.device == skip.device
    # One addition rounded once in the output dtype: equal to the rounded float64 sum.
    assert torch.equal(out, truth.to(dtype))
    if channels_last and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_and_empty():
    base.test_non_contiguous_and_empty("triton")


def test_nan_and_inf_propagate():
    base.test_nan_and_inf_propagate("triton")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 19, 8, 6)])
def test_backward_matches_reference(device, shape):
    low, skip = (t.to(device).requires_grad_(True) for t in base.make(shape, torch.float32))
    grad_out = torch.randn(shape, device=device)
    upsample_add(low, skip, backend="triton").backward(grad_out)
    low64, skip64 = (t.detach().double().requires_grad_(True) for t in (low, skip))
    upsample_add_reference(low64, skip64).backward(grad_out.double())
    assert_close_to_reference(low.grad, low64.grad, "float32")
    assert torch.equal(skip.grad, grad_out)


def test_float64_is_left_to_other_backends():
    low, skip = base.make((1, 2, 4, 4), torch.float64)
    with pytest.raises(Exception, match="does not support low dtype torch.float64"):
        upsample_add(low, skip, backend="triton")
