"""``residual_block(..., pool_input=True)``: the block on ``nn.MaxPool2d(2, 2)(x)``, the pool read as x loads.

Truth is the reference module run in float64 on ``max_pool2d(x)``; every backend here (the
reference twin, the C++ op, the Triton convs in the interpreter; the CUDA kernel on a GPU) is
compared with it on odd map sizes (the floor drops x's last row / column), poisoned outputs.
"""

import pytest
import torch
from torch import nn

from shg_fast.folding import FoldedResidual
from shg_fast.ops import conv_bn_relu_reference, residual_block
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.reference import Residual
from shg_fast.tolerances import assert_close_to_reference

from ..helpers import backends_of, randomize_bn

# (C_in, C_out, H_x, W_x): projection and identity skips; odd, even and the smallest maps.
CASES = [(19, 38, 9, 11), (38, 38, 7, 6), (16, 16, 2, 3)]
# (backend, dtype name): the CPU backends in float64 and float32; Triton in its interpreter; CUDA on a GPU.
# (backend, dtype name, device): the CPU backends in float64 and float32; Triton in its interpreter on CPU
# tensors and compiled on a GPU; the CUDA kernel on a GPU.
FLOAT32_RUNS = [(b, "float32", "cpu") for b in backends_of(RESIDUAL_BLOCK)] + [
    pytest.param("triton", "float32", "cpu", marks=pytest.mark.triton),
    pytest.param("triton", "float32", "cuda", marks=pytest.mark.gpu)]
RUNS = [(b, "float64", "cpu") for b in backends_of(RESIDUAL_BLOCK)] + FLOAT32_RUNS + [
    pytest.param("triton", "float16", "cpu", marks=pytest.mark.triton),
    pytest.param("triton", "float16", "cuda", marks=pytest.mark.gpu),
    pytest.param("triton", "bfloat16", "cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "float16", "cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "bfloat16", "cuda", marks=pytest.mark.gpu)]


def _module(cin, cout):
    return randomize_bn(Residual(cin, cout)).double().eval()


def _truth(module, x, up=None):
    """The reference module in float64 on the 2x2/stride-2 max-pool of x (plus nearest-2x upsample)."""
    with torch.no_grad():
        out = module(nn.MaxPool2d(2, 2)(x.double()))
    if up is not None:
        out = out + up.double().repeat_interleave(2, 2).repeat_interleave(2, 3)[..., :out.shape[2], :out.shape[3]]
    return out


def _skip_without_triton(device):
    from shg_fast.ops import triton_backend

    if triton_backend.IMPORT_ERROR:
        pytest.skip(triton_backend.IMPORT_ERROR)
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("the interpreter runs on CPU-only machines (TRITON_INTERPRET is set there)")


def _setup(backend, dtype_name, device):
    if backend == "triton":
        _skip_without_triton(device)
    return getattr(torch, dtype_name), device


@pytest.mark.parametrize("backend,dtype_name,device", RUNS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_upsample", [False, True], ids=["plain", "upsample"])
def test_pooled_block_matches_float64_truth(backend, dtype_name, device, case, with_upsample, poison_empty):
    dtype, device = _setup(backend, dtype_name, device)
    cin, cout, hx, wx = case
    module = _module(cin, cout)
    block = FoldedResidual.from_module(module).to(device=device, dtype=dtype)
    x64 = torch.randn(2, cin, hx, wx, dtype=torch.float64)
    h, w = hx // 2, wx // 2
    up64 = torch.randn(2, cout, (h + 1) // 2, (w + 1) // 2, dtype=torch.float64) if with_upsample else None
    x = x64.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    up = None if up64 is None else up64.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    out = residual_block(x, block, up, pool_input=True, backend=backend)
    assert out.shape == (2, cout, h, w) and out.dtype == dtype and out.device.type == device
    same = None
    if dtype in (torch.float16, torch.bfloat16):  # the reference twin's own error in that dtype
        same = residual_block(x, block, up, pool_input=True, backend="reference")
    assert_close_to_reference(out, _truth(module, x64, up64), dtype_name, same)


@pytest.mark.parametrize("backend,dtype_name,device", FLOAT32_RUNS)
@pytest.mark.parametrize("channels", [(19, 38), (18, 18)], ids=["projection", "identity"])
def test_nan_propagates_through_the_pool_and_the_floor_drops_the_last_row(backend, dtype_name, device, channels):
    dtype, device = _setup(backend, dtype_name, device)
    module = _module(*channels)
    block = FoldedResidual.from_module(module).to(device=device, dtype=dtype)
    x64 = torch.randn(1, channels[0], 9, 7, dtype=torch.float64)
    x64[0, 3, 8, 2] = float("nan")  # the last row of an odd map: outside every 2x2 window
    x = x64.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    assert not residual_block(x, block, pool_input=True, backend=backend).isnan().any()
    x64[0, 3, 1, 6] = x64[0, 5, 5, 6] = float("nan")  # the last column of an odd map: dropped too
    x64[0, 4, 5, 0] = float("nan")  # inside window (2, 0): poisons what that pixel reaches
    truth = _truth(module, x64)
    out = residual_block(x64.to(device=device, dtype=dtype), block, pool_input=True, backend=backend)
    assert truth.isnan().any() and not truth.isnan().all()
    assert torch.equal(out.isnan().cpu(), truth.isnan())


def test_pool_input_contract_errors():
    block = FoldedResidual.from_module(_module(4, 4)).to(torch.float32)
    with pytest.raises(ValueError, match="at least 2x2"):
        residual_block(torch.randn(1, 4, 1, 6), block, pool_input=True)
    x = torch.randn(1, 4, 9, 9)
    with pytest.raises(ValueError, match=r"upsample must be \(1, 4, 2, 2\)"):  # relative to the pooled 4x4 output
        residual_block(x, block, torch.randn(1, 4, 5, 5), pool_input=True)
    assert residual_block(x, block, torch.randn(1, 4, 2, 2), pool_input=True).shape == (1, 4, 4, 4)


def test_library_op_fake_kernel_and_checks():
    pytest.importorskip("shg_fast._C")
    block = FoldedResidual.from_module(_module(6, 8)).to(torch.float32)
    args = (block.in_scale, block.in_shift, block.w1, block.b1, block.w2, block.b2, block.w3, block.b3, block.ws,
            block.bs)
    x = torch.randn(2, 6, 7, 5).to(memory_format=torch.channels_last)
    meta = [t.to("meta") for t in args]
    out = torch.ops.shg_fast.residual_block(x.to("meta"), *meta, None, True)
    assert out.shape == (2, 8, 3, 2) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.ops.shg_fast.residual_block(x, *args, None).shape == (2, 8, 7, 5)  # the default: no pool
    with pytest.raises(RuntimeError, match="upsample must have shape"):
        torch.ops.shg_fast.residual_block(x, *args, torch.randn(2, 8, 4, 3), True)
    with pytest.raises(RuntimeError, match="at least 2x2"):
        torch.ops.shg_fast.residual_block(x[:, :, :1], *args, None, True)


# Direct Triton conv launches: each pooled input alone, K split (few tiles) or whole (one SM reported).
@pytest.mark.parametrize("pooled", ["x", "x2", "residual"])
@pytest.mark.parametrize("split", [True, False], ids=["split_k", "whole_k"])
@pytest.mark.parametrize("dtype_name,device", [
    pytest.param("float32", "cpu", marks=pytest.mark.triton), pytest.param("float16", "cpu", marks=pytest.mark.triton),
    pytest.param("float32", "cuda", marks=pytest.mark.gpu), pytest.param("float16", "cuda", marks=pytest.mark.gpu)])
def test_triton_conv_reads_each_input_pooled(pooled, split, dtype_name, device, monkeypatch, poison_empty):
    _skip_without_triton(device)
    from shg_fast.kernels.conv_bn_relu import conv_config
    from shg_fast.ops import triton_backend

    dtype = getattr(torch, dtype_name)
    # 16 K steps (of 16 channels in float32, 64 in float16): the rule splits K in two for these 20 pixels.
    c1, c2, c_out, h, w = 256 if dtype == torch.float32 else 1024, 0, 24, 4, 5
    if pooled == "x2":
        c1 = c2 = c1 // 2

    def rand(n, c, h, w, pool=False):
        """Random (n, c, h, w); with pool stored at (2h + 1, 2w + 1), so the floor drops a row and a column."""
        return torch.randn(n, c, *((2 * h + 1, 2 * w + 1) if pool else (h, w)), dtype=torch.float64)

    x64 = rand(1, c1, h, w, pool=pooled == "x")
    x2_64 = rand(1, c2, h, w, pool=True) if pooled == "x2" else None
    res64 = rand(1, c_out, h, w, pool=pooled == "residual")
    w64 = torch.randn(c_out, c1 + c2, 1, 1, dtype=torch.float64) / (c1 + c2) ** 0.5
    b64 = torch.randn(c_out, dtype=torch.float64)
    scale64, shift64 = torch.rand(c1, dtype=torch.float64) + 0.5, torch.randn(c1, dtype=torch.float64)
    cfg = conv_config(h * w, c1, c2, c_out, 1, 1, dtype.itemsize, False, triton_backend._sm_count(torch.device(device)))
    assert cfg["SPLIT_K"] > 1  # the shapes are chosen so that the rule splits K
    if not split:
        monkeypatch.setattr(triton_backend, "_sm_count", lambda device: 1)

    def cast(t):
        if t is None:
            return None
        t = t.to(device=device, dtype=dtype)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    out = torch.ops.shg_fast.conv_bn_relu_triton(
        cast(x64), cast(w64), cast(b64), cast(x2_64), cast(scale64), cast(shift64), cast(res64), None, 1, 0, True,
        True, False, pooled == "x", pooled == "x2", pooled == "residual")
    pool = nn.MaxPool2d(2, 2)
    xs = [pool(x64) if pooled == "x" else x64]
    y64 = conv_bn_relu_reference(xs[0], torch.eye(c1, dtype=torch.float64)[:, :, None, None], in_scale=scale64,
                                 in_shift=shift64, in_relu=True)
    if x2_64 is not None:
        y64 = torch.cat([y64, pool(x2_64)], dim=1)
    truth = conv_bn_relu_reference(y64, w64, b64, out_relu=True,
                                   residual=pool(res64) if pooled == "residual" else res64)
    assert out.shape == (1, c_out, h, w)
    same = None
    if dtype == torch.float16:
        same = conv_bn_relu_reference(y64.to(dtype), w64.to(dtype), b64.to(dtype), out_relu=True,
                                      residual=(pool(res64) if pooled == "residual" else res64).to(dtype))
    assert_close_to_reference(out, truth, dtype_name, same)
