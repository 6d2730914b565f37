"""The extension's residual_block op (the `cpu` backend) against the reference twin."""

import pytest
import torch

from shg_fast.folding import FoldedResidual
from shg_fast.ops import residual_block, residual_block_reference
from shg_fast.ops.extension_backend import cuda_smem_bytes, cuda_tiling, prepack_for_cuda, residual_block_extension
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.reference import Residual
from shg_fast.tolerances import assert_close_to_reference

from ..helpers import randomize_bn

pytest.importorskip("shg_fast._C")

# (C_in, C_out, H, W): projection and identity skips, odd channels and maps.
CASES = [(19, 38, 5, 7), (38, 38, 4, 6), (3, 130, 3, 5), (130, 130, 1, 1), (16, 32, 8, 8)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
H200_SMEM_OPTIN = 232448  # bytes of shared memory a block may opt in to on an H100/H200 (227 KiB)


def make_block(cin, cout, dtype=torch.float64):
    module = randomize_bn(Residual(cin, cout)).double().eval()
    return FoldedResidual.from_module(module).to(dtype)


def make_inputs(cin, cout, h, w, n=2, dtype=torch.float64, with_upsample=True):
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    up = torch.randn(n, cout, (h + 1) // 2, (w + 1) // 2, dtype=torch.float64) if with_upsample else None
    return x.to(dtype), None if up is None else up.to(dtype)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("with_upsample", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_matches_reference(case, with_upsample, channels_last, poison_empty):
    cin, cout, h, w = case
    block = make_block(cin, cout)
    x, up = make_inputs(cin, cout, h, w, with_upsample=with_upsample)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = residual_block(x, block, up, backend="cpu")
    assert out.shape == (2, cout, h, w) and out.dtype == torch.float64
    assert_close_to_reference(out, residual_block_reference(x, block, up), "float64")
    expect_cl = channels_last and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
def test_low_precision_matches_float64_truth(dtype, poison_empty):
    cin, cout, h, w = 19, 38, 5, 7
    block64 = make_block(cin, cout)
    x64, up64 = make_inputs(cin, cout, h, w)
    truth = residual_block_reference(x64, block64, up64)
    block, x, up = block64.to(dtype), x64.to(dtype), up64.to(dtype)
    out = residual_block(x, block, up, backend="cpu")
    assert out.dtype == dtype
    mode = {torch.float32: "float32"}.get(dtype, str(dtype).removeprefix("torch."))
    assert_close_to_reference(out, truth, mode, residual_block_reference(x, block, up))


def test_equals_the_module_it_was_folded_from():
    module = randomize_bn(Residual(20, 20)).double().eval()
    x = torch.randn(1, 20, 6, 6, dtype=torch.float64)
    out = residual_block(x, FoldedResidual.from_module(module), backend="cpu")
    assert_close_to_reference(out, module(x).detach(), "float64")


def test_auto_picks_the_cpu_extension():
    block = make_block(19, 38)
    x, up = make_inputs(19, 38, 5, 7)
    assert RESIDUAL_BLOCK.candidates(x.device, "auto", x, block, up)[0] == "cpu"


@pytest.mark.parametrize("cin,cout,with_upsample", [(19, 38, True), (38, 38, False)])
def test_library_op_passes_opcheck(cin, cout, with_upsample):
    block = make_block(cin, cout)
    x, up = make_inputs(cin, cout, 5, 7, with_upsample=with_upsample)
    args = (x, block.in_scale, block.in_shift, block.w1, block.b1, block.w2, block.b2, block.w3, block.b3,
            block.ws, block.bs, up)
    torch.library.opcheck(torch.ops.shg_fast.residual_block, args)
    torch.library.opcheck(torch.ops.shg_fast.residual_block, (x.to(memory_format=torch.channels_last), *args[1:]))


def test_extension_rejects_bad_input_itself():
    block = make_block(19, 38)
    x, up = make_inputs(19, 38, 5, 7)
    op = torch.ops.shg_fast.residual_block
    fields = [block.in_scale, block.in_shift, block.w1, block.b1, block.w2, block.b2, block.w3, block.b3]
    with pytest.raises(RuntimeError, match="identity skip needs C_in == C_out"):
        op(x, *fields, None, None, up)
    with pytest.raises(RuntimeError, match="ws and bs must be given together"):
        op(x, *fields, block.ws, None, up)
    with pytest.raises(RuntimeError, match=r"upsample must have shape \[2, 38, 3, 4\]"):
        op(x, *fields, block.ws, block.bs, up[..., :3])
    with pytest.raises(RuntimeError, match="w2 dtype Float differs from x Double"):
        op(x, *fields[:4], block.w2.float(), *fields[5:], block.ws, block.bs, up)
    with pytest.raises(RuntimeError, match=r"in_scale must have shape \[19\]"):
        op(x, block.in_scale[:5], *fields[1:], block.ws, block.bs, up)


def test_python_entry_is_the_library_op():
    block = make_block(38, 38)
    x, _ = make_inputs(38, 38, 4, 4)
    assert torch.equal(residual_block_extension(x, block), residual_block(x, block, backend="cpu"))


@pytest.mark.parametrize("cin,cout", [(64, 128), (128, 128), (128, 256), (256, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_network_blocks_fit_the_cuda_kernels_shared_memory(cin, cout, dtype):
    block = make_block(cin, cout, dtype)
    need = cuda_smem_bytes(torch.empty(0, dtype=dtype), block)
    assert 0 < need <= H200_SMEM_OPTIN


def test_shared_memory_of_the_tensor_core_path():
    # bf16, 256 -> 256 (identity), smallest tile S = 2: a1 (2+2)^2 rows x (256 * 2 + 16) bytes, h1 16 rows x
    # (128 * 2 + 16), three weight buffers of 64 rows x (128 + 16) bytes.
    block = make_block(256, 256, torch.bfloat16)
    probe = torch.empty(0, dtype=torch.bfloat16)
    assert cuda_smem_bytes(probe, block) == 16 * 528 + 16 * 272 + 3 * 64 * 144
    # S = 8: a1 100 rows, h1 100 rows (each rounded up to 128 bytes); fits two CTAs per SM on an H200.
    assert cuda_smem_bytes(probe, block, 8) == 52864 + 27264 + 3 * 64 * 144 <= (233472 - 2 * 1024) // 2
    # float32 without TF32: the exact path, no weight buffers; with TF32 four-byte rows and the buffers.
    block32 = make_block(256, 256, torch.float32)
    probe32 = torch.empty(0, dtype=torch.float32)
    exact = cuda_smem_bytes(probe32, block32, allow_tf32=False)
    assert exact == 16 * 1040 + 16 * 528
    assert cuda_smem_bytes(probe32, block32, allow_tf32=True) == exact + 3 * 64 * 144


def test_tiling_fills_an_h200_at_batch_1():
    """Predicted tiling (the launcher's rule, mirrored): maps 64..16 reach >= 90% of 132 SMs at batch 1."""
    block = make_block(256, 256, torch.bfloat16)
    got = {size: cuda_tiling(torch.bfloat16, block, 1, size, size, 132, H200_SMEM_OPTIN) for size in (64, 32, 16, 8, 4)}
    assert got == {64: (8, 4), 32: (8, 8), 16: (4, 8), 8: (2, 8), 4: (2, 8)}
    assert cuda_tiling(torch.bfloat16, block, 64, 64, 64, 132, H200_SMEM_OPTIN) == (8, 1)
    assert cuda_tiling(torch.bfloat16, block, 64, 4, 4, 132, H200_SMEM_OPTIN) == (4, 4)
    assert cuda_tiling(torch.bfloat16, block, 1, 16, 16, 132, H200_SMEM_OPTIN, clusters=False) == (2, 1)
    assert cuda_tiling(torch.float64, make_block(256, 256), 1, 64, 64, 132, H200_SMEM_OPTIN) == (4, 1)


def test_prepacked_block_has_tap_major_w2_and_same_results():
    block = make_block(19, 38)
    packed = prepack_for_cuda(block)
    assert torch.equal(packed.w2, block.w2)
    assert packed.w2.permute(2, 3, 0, 1).is_contiguous()  # what the CUDA glue reads without a copy
    x, up = make_inputs(19, 38, 5, 7)
    assert torch.equal(residual_block(x, packed, up, backend="cpu"), residual_block(x, block, up, backend="cpu"))
