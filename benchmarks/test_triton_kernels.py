"""Triton kernels against their references at the network's real shapes (needs a CUDA GPU).

Batch 1 and 32, 256 features at 64², 32², 16², 8², 4². The reference of the convs is the
unfused PyTorch path (cuDNN convs plus separate elementwise ops). Each benchmark also checks
the result against the reference, so `--benchmark-disable` runs make a large-shape test.
Group by op and shape: `pytest benchmarks/test_triton_kernels.py --benchmark-group-by=group`.
"""

import itertools

import pytest
import torch

from shg_fast.folding import FoldedResidual
from shg_fast.ops import conv_bn_relu, decode_heatmaps, residual_block, upsample_add
from shg_fast.reference import Residual
from shg_fast.tolerances import assert_close_to_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BATCHES = [1, 32]
SIZES = [64, 32, 16, 8, 4]
BACKENDS = ["triton", "reference"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CONV_CASES = list(itertools.product(BATCHES, SIZES, DTYPES, BACKENDS))


def timed(benchmark, group: str, fn):
    """Benchmark ``fn`` (synchronised, after a warm-up) and return its result."""
    benchmark.group = group
    out = fn()
    torch.cuda.synchronize()

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result

    benchmark(run)
    return out


def check(out, reference, mode):
    """Large-shape correctness against ``reference(dtype)``, the reference run on the same inputs in dtype.

    fp32 within the fp32 bound; bf16 at most 2x the bf16 reference's error (docs/DESIGN.md), both
    measured against float32 here (float64 convs are slow on a GPU at these sizes).
    """
    same = reference(torch.bfloat16) if mode == "bfloat16" else None
    assert_close_to_reference(out, reference(torch.float32), mode, same)


@pytest.fixture(autouse=True)
def _seed_and_no_tf32(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def activations(batch, channels, size, dtype):
    x = torch.randn(batch, channels, size, size, device="cuda", dtype=dtype)
    return x.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("batch,size,mode,backend", CONV_CASES)
def test_residual_block(benchmark, batch, size, mode, backend):
    block = FoldedResidual.from_module(Residual(256, 256).eval()).to(device="cuda", dtype=DTYPES[mode])
    x = activations(batch, 256, size, DTYPES[mode])
    with torch.inference_mode():
        out = timed(benchmark, f"residual_block 256 {batch}x{size}x{size} {mode}",
                    lambda: residual_block(x, block, backend=backend))
        check(out, lambda dt: residual_block(x.to(dt), block.to(dt), backend="reference"), mode)


@pytest.mark.parametrize("batch,size,mode,backend", CONV_CASES)
def test_conv3x3_bias_relu(benchmark, batch, size, mode, backend):
    dtype = DTYPES[mode]
    x = activations(batch, 128, size, dtype)
    weight = (torch.randn(128, 128, 3, 3, device="cuda") / 34).to(dtype)
    bias = torch.randn(128, device="cuda", dtype=dtype)
    with torch.inference_mode():
        out = timed(benchmark, f"conv3x3 128 {batch}x{size}x{size} {mode}",
                    lambda: conv_bn_relu(x, weight, bias, out_relu=True, backend=backend))
        check(out, lambda dt: conv_bn_relu(x.to(dt), weight.to(dt), bias.to(dt), out_relu=True, backend="reference"),
              mode)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES[:-1])
@pytest.mark.parametrize("batch", BATCHES)
def test_upsample_add(benchmark, backend, size, batch):
    skip = activations(batch, 256, size, torch.float32)
    low = activations(batch, 256, size // 2, torch.float32)
    out = timed(benchmark, f"upsample_add 256 {batch}x{size}x{size}", lambda: upsample_add(low, skip, backend=backend))
    assert torch.equal(out, upsample_add(low, skip, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("batch", BATCHES)
def test_decode_heatmaps(benchmark, backend, flip, batch):
    hm = torch.randn(batch, 16, 64, 64, device="cuda")
    flipped = torch.randn_like(hm) if flip else None
    coords, maxvals = timed(benchmark, f"decode_heatmaps {batch}x16x64x64 flip={flip}",
                            lambda: decode_heatmaps(hm, flipped, backend=backend))
    ref_coords, ref_max = decode_heatmaps(hm, flipped, backend="reference")
    assert torch.equal(coords, ref_coords) and torch.equal(maxvals, ref_max)
