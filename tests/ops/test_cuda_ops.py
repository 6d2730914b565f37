"""The CUDA kernels of the extension against the references (needs a GPU; skipped without one)."""

import pytest
import torch

from shg_fast import _extension
from shg_fast.backends import BackendUnavailableError
from shg_fast.ops import (
    decode_heatmaps,
    decode_heatmaps_reference,
    flip_permutation,
    residual_block,
    residual_block_reference,
    upsample_add,
    upsample_add_reference,
)
from shg_fast.ops.cuda_backend import prepack_for_cuda
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.testing import assert_close_to_reference

from .test_residual_block_cpu import make_block, make_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _extension.has_kernel("residual_block", "CUDA"),
                       reason="extension built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BLOCK_DTYPES = [torch.float64, torch.float16, torch.bfloat16]  # the cuda backend refuses float32 blocks
MODE = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 19, 8, 8), (3, 130, 4, 6), (1, 1, 1, 1), (2, 256, 64, 64)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_add(dtype, shape, channels_last, poison_empty):
    n, c, h, w = shape
    low = torch.randn(n, c, (h + 1) // 2, (w + 1) // 2, device="cuda").to(dtype)
    skip = torch.randn(n, c, h, w, device="cuda").to(dtype)
    if channels_last:
        low, skip = low.to(memory_format=torch.channels_last), skip.to(memory_format=torch.channels_last)
    out = upsample_add(low, skip, backend="cuda")
    assert torch.equal(out, upsample_add_reference(low.double(), skip.double()).to(dtype))
    assert out.stride() == skip.stride()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 16, 64, 64), (1, 19, 1, 9), (2, 16, 7, 2)])
@pytest.mark.parametrize("flip", [False, True])
def test_decode_heatmaps(dtype, shape, flip, poison_empty):
    hm = torch.randn(shape, device="cuda").to(dtype)
    hm.view(-1)[:: 7] = hm.view(-1)[1]  # ties: the first maximum must win
    flipped = torch.randn(shape, device="cuda").to(dtype) if flip else None
    pairs = [(0, shape[1] - 1)] if shape[1] > 1 else []
    coords, maxvals = decode_heatmaps(hm, flipped, pairs, backend="cuda")
    ref_coords, ref_max = decode_heatmaps_reference(hm, flipped, flip_permutation(shape[1], pairs) if flip else [])
    assert torch.equal(coords, ref_coords) and torch.equal(maxvals, ref_max)


def test_decode_heatmaps_nan_and_layouts():
    hm = torch.randn(2, 5, 9, 11, device="cuda")
    hm[0, 1, 0, 3] = float("nan")  # the first NaN wins; on the border, so no quarter-pixel move
    hm[0, 1, 6, 6] = float("nan")
    for layout in (hm, hm.to(memory_format=torch.channels_last), hm.transpose(2, 3).contiguous().transpose(2, 3)):
        coords, maxvals = decode_heatmaps(layout, backend="cuda")
        ref_coords, ref_max = decode_heatmaps_reference(hm, None, [])
        assert torch.equal(coords, ref_coords)
        assert torch.equal(maxvals.isnan(), ref_max.isnan()) and torch.equal(maxvals.nan_to_num(), ref_max.nan_to_num())
    assert coords[0, 1].tolist() == [3.0, 0.0]


def _check_block(cin, cout, n, h, w, dtype, with_upsample, channels_last):
    block64 = make_block(cin, cout)
    x64, up64 = make_inputs(cin, cout, h, w, n=n, with_upsample=with_upsample)
    block64, x64 = block64.to("cuda"), x64.cuda()
    up64 = None if up64 is None else up64.cuda()
    truth = residual_block_reference(x64, block64, up64)
    block, x, up = block64.to(dtype), x64.to(dtype), None if up64 is None else up64.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = residual_block(x, block, up, backend="cuda")
    assert out.shape == (n, cout, h, w) and out.dtype == dtype
    expect_cl = channels_last and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)
    same_dtype = residual_block_reference(x, block, up) if dtype in (torch.float16, torch.bfloat16) else None
    assert_close_to_reference(out, truth, MODE[dtype], same_dtype)


@pytest.mark.parametrize("dtype", BLOCK_DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,h,w", [(19, 38, 5, 7), (38, 38, 17, 33), (3, 130, 3, 5), (32, 64, 9, 20),
                                          (64, 64, 1, 1)])
@pytest.mark.parametrize("with_upsample", [False, True])
def test_residual_block_odd_shapes(dtype, cin, cout, h, w, with_upsample, poison_empty):
    _check_block(cin, cout, 2, h, w, dtype, with_upsample, channels_last=True)


@pytest.mark.parametrize("size", [64, 32, 16, 8, 4])
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cin,cout", [(256, 256), (128, 256)])
def test_residual_block_network_sizes(size, batch, dtype, cin, cout, poison_empty):
    _check_block(cin, cout, batch, size, size, dtype, with_upsample=True, channels_last=True)


@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_block_nchw_input(channels_last, poison_empty):
    _check_block(128, 128, 2, 16, 16, torch.bfloat16, with_upsample=False, channels_last=channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_residual_block_prepacked_weights_give_identical_results(dtype):
    block = make_block(64, 128).to(device="cuda", dtype=dtype)
    x, up = make_inputs(64, 128, 9, 20, dtype=dtype)
    x, up = x.cuda().to(memory_format=torch.channels_last), up.cuda()
    out = residual_block(x, block, up, backend="cuda")
    assert torch.equal(residual_block(x, prepack_for_cuda(block), up, backend="cuda"), out)


def test_residual_block_opcheck():
    block = make_block(32, 64).to("cuda")
    x, up = make_inputs(32, 64, 5, 7)
    args = (x.cuda(), block.in_scale, block.in_shift, block.w1, block.b1, block.w2, block.b2, block.w3, block.b3,
            block.ws, block.bs, up.cuda())
    torch.library.opcheck(torch.ops.shg_fast.residual_block, args)


def test_residual_block_rejects_mixed_devices():
    block = make_block(38, 38)
    x, _ = make_inputs(38, 38, 4, 4)
    with pytest.raises(RuntimeError, match="must be on cuda"):
        torch.ops.shg_fast.residual_block(x.cuda(), block.in_scale, block.in_shift, block.w1, block.b1, block.w2,
                                          block.b2, block.w3, block.b3, None, None, None)


@pytest.mark.parametrize("tf32", [False, True])
def test_auto_runs_float32_blocks_on_triton_not_the_scalar_loop(tf32):
    block = make_block(64, 64).to(device="cuda", dtype=torch.float32)
    x, _ = make_inputs(64, 64, 8, 8, dtype=torch.float32)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        assert RESIDUAL_BLOCK.candidates(x.device, "auto", x.cuda(), block)[0] == "triton"
        with pytest.raises(BackendUnavailableError, match="no tensor-core path for float32"):
            residual_block(x.cuda(), block, backend="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_decode_heatmaps_flip_permutation_by_value_limit():
    hm = torch.randn(1, 300, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="at most 256 joints"):
        torch.ops.shg_fast.decode_heatmaps(hm, hm, list(range(300)))
