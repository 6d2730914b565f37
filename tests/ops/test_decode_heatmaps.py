import pytest
import torch

from shg_fast.ops import MPII_FLIP_PAIRS, decode_heatmaps, decode_heatmaps_reference, flip_permutation

from ..helpers import cpu_backends

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 16, 64, 64), (1, 19, 1, 9), (2, 16, 7, 2)]


def naive_decode(hm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loop transcription of the original Lua getPreds + quarter offset, 0-based."""
    n, k, h, w = hm.shape
    coords, maxvals = torch.zeros(n, k, 2), torch.zeros(n, k)
    for i in range(n):
        for j in range(k):
            m = hm[i, j].float()
            flat = m.flatten().tolist()
            best = max(range(len(flat)), key=lambda t: (flat[t], -t))
            x, y = best % w, best // w
            fx, fy = float(x), float(y)
            if 0 < x < w - 1 and 0 < y < h - 1:
                dx, dy = m[y, x + 1] - m[y, x - 1], m[y + 1, x] - m[y - 1, x]
                fx += 0.25 * (1 if dx > 0 else -1 if dx < 0 else 0)
                fy += 0.25 * (1 if dy > 0 else -1 if dy < 0 else 0)
            coords[i, j] = torch.tensor([fx, fy])
            maxvals[i, j] = flat[best]
    return coords, maxvals


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 6, 6)])
def test_reference_matches_naive_loop(shape):
    hm = torch.randn(shape)
    hm[0, 0, 2, 2] = hm[0, 0].max() + 1  # interior peak
    hm[0, 0, 2, 1] = hm[0, 0, 2, 3]  # tie on x: no move
    coords, maxvals = decode_heatmaps_reference(hm, None, [])
    ref_coords, ref_max = naive_decode(hm)
    assert torch.equal(coords, ref_coords) and torch.equal(maxvals, ref_max)
    assert coords[0, 0, 0] == 2.0


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("flip", [False, True])
def test_backend_matches_reference(backend, dtype, shape, flip, poison_empty):
    hm = torch.randn(shape).to(dtype)
    flipped = torch.randn(shape).to(dtype) if flip else None
    pairs = MPII_FLIP_PAIRS if shape[1] == 16 else [(0, shape[1] - 1)] if shape[1] > 1 else []
    coords, maxvals = decode_heatmaps(hm, flipped, pairs, backend=backend)
    perm = flip_permutation(shape[1], pairs) if flip else []
    ref_coords, ref_max = decode_heatmaps_reference(hm, flipped, perm)
    assert coords.dtype == torch.float32 and coords.shape == (shape[0], shape[1], 2)
    assert maxvals.dtype == torch.float32 and maxvals.shape == shape[:2]
    assert torch.equal(coords, ref_coords)
    assert torch.equal(maxvals, ref_max)


@pytest.mark.parametrize("backend", cpu_backends())
def test_first_maximum_and_quarter_offsets(backend):
    hm = torch.zeros(1, 4, 5, 7) - 1
    hm[0, 0, 2, 3], hm[0, 0, 2, 4], hm[0, 0, 3, 3] = 5, 2, 1  # right > left, below > above
    hm[0, 1, 1, 1] = hm[0, 1, 3, 5] = 4  # two maxima: the first in row-major order wins
    hm[0, 1, 1, 0] = 3  # left larger: x moves -0.25
    hm[0, 1, 0, 1] = 3.5  # above larger: y moves -0.25
    hm[0, 2, 0, 6] = 9  # on the border: no refinement
    hm[0, 3, 2, 3] = 2  # neighbours all tied: no move
    coords, maxvals = decode_heatmaps(hm, backend=backend)
    expected = torch.tensor([[3.25, 2.25], [0.75, 0.75], [6.0, 0.0], [3.0, 2.0]])
    torch.testing.assert_close(coords[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(maxvals[0], torch.tensor([5.0, 4.0, 9.0, 2.0]))


@pytest.mark.parametrize("backend", cpu_backends())
def test_flip_averaging_mirrors_and_swaps(backend):
    hm = torch.randn(2, 16, 8, 9)
    # Flipped maps built from hm itself: mirrored in x with joints swapped -> averaging recovers hm.
    perm = flip_permutation(16, MPII_FLIP_PAIRS)
    flipped = hm[:, perm].flip(-1)
    coords, maxvals = decode_heatmaps(hm, flipped, backend=backend)
    ref_coords, ref_max = decode_heatmaps(hm, backend=backend)
    assert torch.equal(coords, ref_coords)
    torch.testing.assert_close(maxvals, ref_max)


@pytest.mark.parametrize("backend", cpu_backends())
def test_nan_counts_as_maximum(backend):
    hm = torch.randn(1, 2, 5, 5)
    hm[0, 0, 1, 3] = float("nan")
    hm[0, 0, 1, 2], hm[0, 0, 1, 4] = 0.0, 1.0  # right neighbour larger: x + 0.25
    hm[0, 0, 0, 3], hm[0, 0, 2, 3] = 1.0, 0.0  # above larger: y - 0.25
    hm[0, 1, 2, 2] = float("nan")
    hm[0, 1, 2, 1] = float("nan")  # the first NaN wins; its NaN right neighbour: no move in x
    coords, maxvals = decode_heatmaps(hm, backend=backend)
    assert coords[0, 0].tolist() == [3.25, 0.75]
    assert coords[0, 1, 0].item() == 1.0
    assert torch.isnan(maxvals[0]).all()


@pytest.mark.parametrize("backend", cpu_backends())
def test_empty_batch(backend):
    coords, maxvals = decode_heatmaps(torch.randn(0, 16, 8, 8), backend=backend)
    assert coords.shape == (0, 16, 2) and maxvals.shape == (0, 16)


def test_library_op_passes_opcheck():
    pytest.importorskip("shg_fast._C")
    hm, fl = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    torch.library.opcheck(torch.ops.shg_fast.decode_heatmaps, (hm, fl, [3, 1, 2, 0]))
    torch.library.opcheck(torch.ops.shg_fast.decode_heatmaps, (hm, None, []))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"heatmaps": torch.randn(4, 8, 8)}, ValueError, "4-D"),
        ({"heatmaps": torch.randn(1, 2, 0, 8)}, ValueError, "non-empty"),
        ({"heatmaps": torch.ones(1, 2, 4, 4, dtype=torch.int64)}, TypeError, "dtype"),
        ({"heatmaps": torch.randn(1, 2, 4, 4), "flipped": torch.randn(1, 2, 4, 5)}, ValueError, "shape"),
        ({"heatmaps": torch.randn(1, 2, 4, 4), "flipped": torch.randn(1, 2, 4, 4), "flip_pairs": [(0, 2)]},
         ValueError, "outside"),
        ({"heatmaps": torch.randn(1, 3, 4, 4), "flipped": torch.randn(1, 3, 4, 4), "flip_pairs": [(0, 1), (1, 2)]},
         ValueError, "more than one"),
    ],
)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        decode_heatmaps(**kwargs)
