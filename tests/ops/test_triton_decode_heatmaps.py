"""The triton backend of decode_heatmaps: bit-exact against the reference (interpreter on CPU)."""

import pytest
import torch

from shg_fast.ops import MPII_FLIP_PAIRS, decode_heatmaps, decode_heatmaps_reference, flip_permutation

from . import test_decode_heatmaps as base

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 64, 64), (1, 5, 1, 9), (1, 16, 7, 2), (1, 2, 70, 70)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("flip", [False, True])
def test_matches_reference_exactly(device, dtype, shape, flip, poison_empty):
    hm = torch.randn(shape, device=device).to(dtype)
    flipped = torch.randn(shape, device=device).to(dtype) if flip else None
    pairs = MPII_FLIP_PAIRS if shape[1] == 16 else [(0, shape[1] - 1)] if shape[1] > 1 else []
    got = decode_heatmaps(hm, flipped, pairs, backend="triton")
    expected = decode_heatmaps_reference(hm, flipped, flip_permutation(shape[1], pairs) if flip else [])
    assert got[0].shape == (shape[0], shape[1], 2) and got[1].shape == shape[:2]
    for out, ref in zip(got, expected):  # coords, maxvals: float32, bit-exact
        assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_maximum_in_a_later_block_and_ties_across_blocks():
    # 70 x 70 maps span two scan blocks of 4096 elements.
    hm = torch.randn(1, 3, 70, 70)
    hm[0, 0, 65, 33] = 10.0  # the maximum lies in the second block
    hm[0, 1, 10, 10] = hm[0, 1, 66, 10] = 10.0  # tie across blocks: the first wins
    hm[0, 2, 66, 5] = float("nan")  # a NaN in the second block beats a larger finite value earlier
    hm[0, 2, 1, 1] = 100.0
    coords, maxvals = decode_heatmaps(hm, backend="triton")
    pixels = coords[0].round().tolist()
    assert pixels == [[33.0, 65.0], [10.0, 10.0], [5.0, 66.0]]
    assert maxvals[0, :2].tolist() == [10.0, 10.0] and torch.isnan(maxvals[0, 2])
    ref_coords, _ = decode_heatmaps_reference(hm, None, [])
    assert torch.equal(coords, ref_coords)


def test_non_contiguous_input():
    hm = torch.randn(2, 5, 9, 11).transpose(2, 3)
    fl = torch.randn(2, 5, 22, 9)[:, :, ::2]
    coords, maxvals = decode_heatmaps(hm, fl, [(0, 4)], backend="triton")
    ref_coords, ref_max = decode_heatmaps_reference(hm, fl, [4, 1, 2, 3, 0])
    assert torch.equal(coords, ref_coords) and torch.equal(maxvals, ref_max)


def test_first_maximum_and_quarter_offsets():
    base.test_first_maximum_and_quarter_offsets("triton")


def test_flip_averaging_mirrors_and_swaps():
    base.test_flip_averaging_mirrors_and_swaps("triton")


def test_nan_counts_as_maximum():
    base.test_nan_counts_as_maximum("triton")


def test_empty_batch():
    base.test_empty_batch("triton")
