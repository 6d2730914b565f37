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
from shg_fast.ops.extension_backend import cuda_tiling, prepack_for_cuda
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.tolerances import assert_close_to_reference

from .cuda_launcher import library, run_residual_block
from .test_residual_block_cpu import make_block, make_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _extension.has_kernel("residual_block", "CUDA"),
                       reason="extension built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BLOCK_DTYPES = [torch.float64, torch.float16, torch.bfloat16]  # float32 blocks: only as TF32 (tests below)
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


def _check_block(cin, cout, n, h, w, dtype, with_upsample, channels_last, mode=None):
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
    assert_close_to_reference(out, truth, mode or MODE[dtype], same_dtype)


@pytest.mark.parametrize("dtype", BLOCK_DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,h,w", [(19, 38, 5, 7), (38, 38, 17, 33), (3, 130, 3, 5), (32, 64, 9, 20),
                                          (64, 64, 1, 1), (48, 96, 7, 3), (64, 64, 17, 33), (16, 16, 2, 2)])
@pytest.mark.parametrize("with_upsample", [False, True])
def test_residual_block_odd_shapes(dtype, cin, cout, h, w, with_upsample, poison_empty):
    _check_block(cin, cout, 2, h, w, dtype, with_upsample, channels_last=True)


@pytest.mark.parametrize("size", [64, 32, 16, 8, 4])
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cin,cout", [(256, 256), (128, 256)])
def test_residual_block_network_sizes(size, batch, dtype, cin, cout, poison_empty):
    _check_block(cin, cout, batch, size, size, dtype, with_upsample=True, channels_last=True)


@pytest.mark.parametrize("graph", [False, True], ids=["stream", "cuda-graph"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_residual_blocks_back_to_back(graph, dtype, poison_empty):
    """Block launches that each read the one before (programmatic dependent launches on sm_90+: the next grid may
    start early and waits in griddepcontrol.wait), at batch 1 on small maps where the CTAs hold their whole weight
    share, on one stream and replayed from one CUDA graph: each output as the float64 chain's."""
    from shg_fast.ops.extension_backend import cuda_launch_smem

    props = torch.cuda.get_device_properties(0)
    limit = props.shared_memory_per_block_optin
    blocks64 = [make_block(256, 256).to("cuda") for _ in range(3)]
    x64 = make_inputs(256, 256, 16, 16, n=1, with_upsample=False)[0].cuda()
    x = x64.to(dtype).contiguous(memory_format=torch.channels_last)
    blocks = [b.to(dtype) for b in blocks64]
    if props.major >= 9:  # the path under test: every CTA loads its weight share up front
        assert all(cuda_launch_smem(dtype, blocks[0], 1, s, s, props.multi_processor_count, limit)[1] for s in (16, 8))

    def chain(x, blocks, run):  # 16x16, then its 2x2 max-pool (8x8), then 8x8
        a = run(x, blocks[0])
        b = run(a, blocks[1], pool_input=True)
        return a, b, run(b, blocks[2])

    def on_cuda(x, block, pool_input=False):
        return residual_block(x, block, pool_input=pool_input, backend="cuda")

    truth = chain(x64, blocks64, residual_block_reference)
    same = chain(x, blocks, residual_block_reference)
    if graph:
        chain(x, blocks, on_cuda)  # warm-up: kernel attributes set outside the capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs = chain(x, blocks, on_cuda)
        for out in outs:
            out.fill_(float("nan"))  # what the replay does not write stays NaN
        g.replay()
    else:
        outs = chain(x, blocks, on_cuda)
    torch.cuda.synchronize()
    for out, ref, ref_same in zip(outs, truth, same):
        assert_close_to_reference(out, ref, MODE[dtype], ref_same)


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


@pytest.fixture
def tf32_matmul(request):
    """Set torch.backends.cuda.matmul.allow_tf32 to the test's parameter, restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("tf32_matmul", [False, True], indirect=True)
def test_auto_runs_exact_float32_blocks_on_triton_and_tf32_on_the_block_kernel(tf32_matmul):
    block = make_block(64, 64).to(device="cuda", dtype=torch.float32)
    x, _ = make_inputs(64, 64, 8, 8, dtype=torch.float32)
    first = RESIDUAL_BLOCK.candidates(x.device, "auto", x.cuda(), block)[0]
    if tf32_matmul:
        assert first == "cuda"
    else:
        assert first == "triton"
        with pytest.raises(BackendUnavailableError, match="only as TF32"):
            residual_block(x.cuda(), block, backend="cuda")


@pytest.fixture(scope="module")
def launcher():
    found = library()
    assert found is not None, "the CUDA build does not export shg_residual_block (symbol visibility?)"
    return found


def _tiling_id(dtype, cin, cout, batch, h, w):
    """The (S, R) the launcher picks on this GPU, for failure messages (which tile path broke)."""
    props = torch.cuda.get_device_properties(0)
    block = make_block(cin, cout, dtype)
    return cuda_tiling(dtype, block, batch, h, w, props.multi_processor_count, props.shared_memory_per_block_optin,
                       props.major >= 9, allow_tf32=dtype == torch.float32)


def _check_raw(launcher, cin, cout, n, in_h, in_w, dtype, pool, with_upsample, nan=False):
    """shg_residual_block called directly (pool_input, TF32) against the float64 reference on the pooled input."""
    block64 = make_block(cin, cout).to("cuda")
    x64, _ = make_inputs(cin, cout, in_h, in_w, n=n, with_upsample=False)
    x64 = x64.cuda()
    if nan:
        x64[0, 0, min(1, in_h - 1), 0] = float("nan")
    pooled = torch.nn.functional.max_pool2d(x64, 2) if pool else x64
    h, w = pooled.shape[2:]
    up64 = torch.randn(n, cout, (h + 1) // 2, (w + 1) // 2, dtype=torch.float64, device="cuda") \
        if with_upsample else None
    truth = residual_block_reference(pooled, block64, up64)
    block, x = block64.to(dtype), x64.to(dtype)
    up = None if up64 is None else up64.to(dtype)
    out = run_residual_block(launcher, x, block, up, pool_input=pool, allow_tf32=dtype == torch.float32)
    where = f"tiling (S, R) = {_tiling_id(dtype, cin, cout, n, h, w)}"
    assert out.shape == truth.shape, where
    assert torch.equal(out.isnan(), truth.isnan()), f"NaN pattern differs; {where}"
    mode = "tf32" if dtype == torch.float32 else MODE[dtype]
    same = residual_block_reference(torch.nn.functional.max_pool2d(x, 2) if pool else x, block, up) \
        if dtype in (torch.float16, torch.bfloat16) else None
    keep = ~truth.isnan()
    try:
        assert_close_to_reference(out[keep], truth[keep], mode, None if same is None else same[keep])
    except AssertionError as err:
        raise AssertionError(f"{err}; {where}") from None


RAW_DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]  # float32: TF32 tensor cores


@pytest.mark.parametrize("dtype", RAW_DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,in_h,in_w", [(64, 64, 9, 13), (32, 64, 17, 6), (48, 96, 4, 4), (19, 38, 7, 11),
                                                (128, 256, 16, 16), (256, 256, 8, 9)])
@pytest.mark.parametrize("with_upsample", [False, True])
def test_residual_block_pool_input(launcher, dtype, cin, cout, in_h, in_w, with_upsample, poison_empty):
    _check_raw(launcher, cin, cout, 2, in_h, in_w, dtype, pool=True, with_upsample=with_upsample)


@pytest.mark.parametrize("dtype", RAW_DTYPES, ids=str)
@pytest.mark.parametrize("pool", [False, True])
def test_residual_block_nan_propagates(launcher, dtype, pool, poison_empty):
    _check_raw(launcher, 64, 64, 1, 10, 10, dtype, pool=pool, with_upsample=True, nan=True)


# Batch 1 maps of 64 .. 4 pick tiles S = 8, 4, 2 with clusters R = 2 .. 8 on an H200; batch 8 and 32
# take R = 1 (and S = 4 on 4x4 maps); odd sizes leave partial tiles.
@pytest.mark.parametrize("size", [64, 32, 16, 8, 4, 13, 5])
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("cin,cout", [(256, 256), (128, 256), (64, 128)])
def test_residual_block_tf32_network_sizes(launcher, size, batch, cin, cout, poison_empty):
    _check_raw(launcher, cin, cout, batch, size, size, torch.float32, pool=False, with_upsample=True)


@pytest.mark.parametrize("size", [64, 32, 16, 8, 4])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_residual_block_pool_input_network_sizes(launcher, size, batch, dtype, poison_empty):
    _check_raw(launcher, 256, 256, batch, 2 * size, 2 * size, dtype, pool=True, with_upsample=False)


def test_residual_block_op_tf32_matches_tf32_tolerance(poison_empty):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _check_block(128, 256, 2, 16, 16, torch.float32, with_upsample=True, channels_last=True, mode="tf32")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_decode_heatmaps_flip_permutation_by_value_limit():
    hm = torch.randn(1, 300, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="at most 256 joints"):
        torch.ops.shg_fast.decode_heatmaps(hm, hm, list(range(300)))
