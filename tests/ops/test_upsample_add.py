import pytest
import torch

from shg_fast.ops import upsample_add, upsample_add_reference
from shg_fast.tolerances import max_rel_error

from ..helpers import cpu_backends

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(1, 3, 5, 7), (2, 19, 8, 8), (3, 130, 4, 6), (1, 1, 1, 1), (2, 256, 64, 64)]


def make(shape, dtype, channels_last=False):
    n, c, h, w = shape
    low = torch.randn(n, c, (h + 1) // 2, (w + 1) // 2).to(dtype)
    skip = torch.randn(n, c, h, w).to(dtype)
    if channels_last:
        low, skip = low.to(memory_format=torch.channels_last), skip.to(memory_format=torch.channels_last)
    return low, skip


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_float64_reference(backend, dtype, shape, channels_last, poison_empty):
    low, skip = make(shape, dtype, channels_last)
    out = upsample_add(low, skip, backend=backend)
    truth = upsample_add_reference(low.double(), skip.double())
    assert out.shape == skip.shape and out.dtype == dtype
    assert not torch.isnan(out).any()
    # One addition rounded once in the output dtype: exact in fp64 terms up to that rounding.
    assert torch.equal(out, truth.to(dtype))
    if channels_last and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", cpu_backends())
def test_non_contiguous_and_empty(backend):
    low, skip = make((2, 6, 8, 10), torch.float32)
    skip_t = skip.transpose(2, 3).contiguous().transpose(2, 3)  # odd strides, same values
    out = upsample_add(low[:, ::2], skip_t[:, ::2], backend=backend)
    assert max_rel_error(out, upsample_add_reference(low[:, ::2], skip[:, ::2])) == 0
    low0, skip0 = make((0, 4, 6, 6), torch.float32)
    assert upsample_add(low0, skip0, backend=backend).shape == (0, 4, 6, 6)


@pytest.mark.parametrize("backend", cpu_backends())
def test_nan_and_inf_propagate(backend):
    low, skip = make((1, 2, 4, 4), torch.float32)
    low[0, 0, 1, 1] = float("nan")
    skip[0, 1, 0, 0] = float("inf")
    out = upsample_add(low, skip, backend=backend)
    assert torch.isnan(out[0, 0, 2:4, 2:4]).all() and torch.isinf(out[0, 1, 0, 0])
    assert torch.isfinite(out[0, 0, :2]).all()


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 6, 8)])  # odd maps: padded sum; even: ATen's backward
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients(backend, shape, channels_last):
    low, skip = make(shape, torch.float64, channels_last)
    low.requires_grad_(True)
    skip.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: upsample_add(a, b, backend=backend), (low, skip))


@pytest.mark.parametrize("backend", cpu_backends())
def test_grad_low_sums_each_block(backend):
    low, skip = make((1, 1, 3, 3), torch.float64)
    low.requires_grad_(True)
    upsample_add(low, skip, backend=backend).sum().backward()
    # Each low pixel feeds a 2x2 block, cropped at the odd edge.
    expected = torch.tensor([[4.0, 4.0], [4.0, 4.0]]).reshape(1, 1, 2, 2)
    expected[..., :, 1] = 2
    expected[..., 1, :] = 2
    expected[..., 1, 1] = 1
    torch.testing.assert_close(low.grad, expected.double())


def test_library_op_passes_opcheck():
    pytest.importorskip("shg_fast._C")
    low, skip = make((2, 3, 5, 7), torch.float64)
    torch.library.opcheck(torch.ops.shg_fast.upsample_add, (low.requires_grad_(), skip))


@pytest.mark.parametrize(
    "low,skip,exc,match",
    [
        (torch.randn(1, 2, 3), torch.randn(1, 2, 6, 6), ValueError, "4-D"),
        (torch.randn(1, 2, 2, 2), torch.randn(1, 2, 6, 6), ValueError, r"\(1, 2, 3, 3\)"),
        (torch.randn(1, 3, 3, 3), torch.randn(1, 2, 6, 6), ValueError, "must have shape"),
        (torch.randn(1, 2, 3, 3).half(), torch.randn(1, 2, 6, 6), TypeError, "share a dtype"),
        (torch.ones(1, 2, 3, 3, dtype=torch.int32), torch.ones(1, 2, 6, 6, dtype=torch.int32), TypeError, "dtype"),
    ],
)
def test_bad_input(low, skip, exc, match):
    with pytest.raises(exc, match=match):
        upsample_add(low, skip)


def test_extension_rejects_bad_input_itself():
    pytest.importorskip("shg_fast._C")
    with pytest.raises(RuntimeError, match="ceil"):
        torch.ops.shg_fast.upsample_add(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 6, 6))
