"""Property tests: every op against its reference over random shapes, dtypes and values (CPU
backends), and bitwise-identical results when the same backend runs the same input twice."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shg_fast.folding import FoldedResidual
from shg_fast.ops import conv_bn_relu, conv_bn_relu_reference, decode_heatmaps, decode_heatmaps_reference
from shg_fast.ops import residual_block, upsample_add, upsample_add_reference
from shg_fast.ops.conv_bn_relu import CONV_BN_RELU
from shg_fast.ops.decode_heatmaps import DECODE_HEATMAPS, MPII_FLIP_PAIRS, flip_permutation
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.ops.upsample_add import UPSAMPLE_ADD
from shg_fast.reference import Residual
from shg_fast.tolerances import assert_close_to_reference

from .helpers import backends_of, randomize_bn

# Small, reproducible runs: CI must stay fast and never flake.
PROPERTY = settings(max_examples=20, deadline=None, database=None, derandomize=True)

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MODE = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}
SPECIALS = (float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30)

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2 ** 31 - 1)
scales = st.sampled_from((1e-3, 1.0, 1e3))


def random_tensor(shape, dtype, seed, scale=1.0, specials=0):
    """randn * scale in ``dtype`` with ``specials`` entries replaced by NaN/Inf/zeros/tiny values."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    flat = t.view(-1)
    if flat.numel():
        for i in range(specials):
            index = torch.randint(flat.numel(), (1,), generator=g).item()
            flat[index] = SPECIALS[i % len(SPECIALS)]
    return t


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bit pattern (NaN payloads included)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(ints[a.element_size()]), b.contiguous().view(ints[b.element_size()]))


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


def assert_deterministic(fn):
    """Run ``fn`` twice: every output must be bitwise identical."""
    first, second = outputs(fn()), outputs(fn())
    assert all(bitwise_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("backend", backends_of(UPSAMPLE_ADD))
@PROPERTY
@given(n=st.integers(0, 2), c=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9), dtype=dtypes,
       seed=seeds, scale=scales, specials=st.integers(0, 3), channels_last=st.booleans())
def test_upsample_add_matches_reference(backend, n, c, h, w, dtype, seed, scale, specials, channels_last):
    low = random_tensor((n, c, (h + 1) // 2, (w + 1) // 2), dtype, seed, scale, specials)
    skip = random_tensor((n, c, h, w), dtype, seed + 1, scale)
    if channels_last:
        low, skip = low.to(memory_format=torch.channels_last), skip.to(memory_format=torch.channels_last)
    out = upsample_add(low, skip, backend=backend)
    # One addition, rounded once to the output dtype: exact against the float64 twin.
    truth = upsample_add_reference(low.double(), skip.double()).to(dtype)
    torch.testing.assert_close(out, truth, rtol=0, atol=0, equal_nan=True)
    assert_deterministic(lambda: upsample_add(low, skip, backend=backend))


@pytest.mark.parametrize("backend", backends_of(DECODE_HEATMAPS))
@PROPERTY
@given(n=st.integers(0, 2), k=st.integers(1, 16), h=st.integers(1, 8), w=st.integers(1, 8), dtype=dtypes,
       seed=seeds, specials=st.integers(0, 2), flip=st.booleans(), coarse=st.booleans())
def test_decode_heatmaps_matches_reference(backend, n, k, h, w, dtype, seed, specials, flip, coarse):
    heatmaps = random_tensor((n, k, h, w), dtype, seed, 1.0, specials)
    if coarse:  # few distinct values: ties decide the argmax and the quarter-pixel steps
        heatmaps = heatmaps.clamp(-1, 1).round()
    flipped = random_tensor((n, k, h, w), dtype, seed + 1) if flip else None
    pairs = MPII_FLIP_PAIRS if k == 16 else ()
    coords, maxvals = decode_heatmaps(heatmaps, flipped, pairs, backend=backend)
    perm = flip_permutation(k, pairs) if flip and pairs else []
    ref_coords, ref_maxvals = decode_heatmaps_reference(heatmaps, flipped, perm)
    torch.testing.assert_close(coords, ref_coords, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(maxvals, ref_maxvals, rtol=0, atol=0, equal_nan=True)
    assert_deterministic(lambda: decode_heatmaps(heatmaps, flipped, pairs, backend=backend))


@pytest.mark.parametrize("backend", backends_of(CONV_BN_RELU))
@PROPERTY
@given(n=st.integers(0, 2), cin=st.integers(1, 5), cout=st.integers(1, 5), h=st.integers(1, 7),
       w=st.integers(1, 7), k=st.sampled_from((1, 3)), stride=st.sampled_from((1, 2)), dtype=dtypes, seed=seeds,
       prologue=st.booleans(), out_relu=st.booleans(), residual=st.booleans(), upsample=st.booleans())
def test_conv_bn_relu_matches_float64(backend, n, cin, cout, h, w, k, stride, dtype, seed, prologue, out_relu, residual,
                                      upsample):
    x = random_tensor((n, cin, h, w), dtype, seed)
    weight = random_tensor((cout, cin, k, k), dtype, seed + 1, 0.5)
    bias = random_tensor((cout,), dtype, seed + 2)
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    kwargs = dict(stride=stride, out_relu=out_relu)
    if prologue:
        kwargs.update(in_scale=random_tensor((cin,), dtype, seed + 3).abs() + 0.5,
                      in_shift=random_tensor((cin,), dtype, seed + 4), in_relu=True)
    if residual:
        kwargs["residual"] = random_tensor((n, cout, oh, ow), dtype, seed + 5)
    if upsample:
        kwargs["upsample"] = random_tensor((n, cout, (oh + 1) // 2, (ow + 1) // 2), dtype, seed + 6)
    out = conv_bn_relu(x, weight, bias, backend=backend, **kwargs)
    as64 = {key: v.double() if isinstance(v, torch.Tensor) else v for key, v in kwargs.items()}
    truth = conv_bn_relu_reference(x.double(), weight.double(), bias.double(), **as64)
    same_dtype = conv_bn_relu_reference(x, weight, bias, **kwargs)
    assert out.dtype == dtype
    assert_close_to_reference(out, truth, MODE[dtype], reference_same_dtype=same_dtype)
    assert_deterministic(lambda: conv_bn_relu(x, weight, bias, backend=backend, **kwargs))


@pytest.mark.parametrize("backend", backends_of(RESIDUAL_BLOCK))
@PROPERTY
@given(n=st.integers(0, 2), cin=st.sampled_from((2, 4, 6)), cout=st.sampled_from((2, 4, 6)), h=st.integers(1, 6),
       w=st.integers(1, 6), dtype=st.sampled_from((torch.float32, torch.float64)), seed=seeds,
       upsample=st.booleans())
def test_residual_block_matches_the_module(backend, n, cin, cout, h, w, dtype, seed, upsample):
    torch.manual_seed(seed)
    module = randomize_bn(Residual(cin, cout)).eval().double()
    block = FoldedResidual.from_module(module).to(dtype)  # folded in float64, then rounded once
    x = random_tensor((n, cin, h, w), dtype, seed)
    up = random_tensor((n, cout, (h + 1) // 2, (w + 1) // 2), dtype, seed + 1) if upsample else None
    out = residual_block(x, block, up, backend=backend)
    with torch.no_grad():
        truth = module(x.double())
    if up is not None:
        truth = upsample_add_reference(up.double(), truth)
    assert out.dtype == dtype
    assert_close_to_reference(out, truth, MODE[dtype])
    assert_deterministic(lambda: residual_block(x, block, up, backend=backend))
