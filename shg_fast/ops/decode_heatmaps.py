"""Heatmap argmax with the original code's quarter-pixel refinement, and optional flip test.

For each (n, joint) map: the first maximum in row-major order at (x, y); if
``0 < x < W-1 and 0 < y < H-1``, x moves by ``0.25 * sign(map[y, x+1] - map[y, x-1])`` and y by
``0.25 * sign(map[y+1, x] - map[y-1, x])`` (no move on a tie, or when a neighbour is NaN).
NaN counts as the largest value, as in ``torch.argmax``. Coordinates are 0-based heatmap
pixels ``(x, y)``.

With ``flipped`` (the heatmaps of the horizontally mirrored image) the map decoded is
``(heatmaps[n, k] + mirror_x(flipped[n, perm[k]])) / 2``, computed in float32, where ``perm``
swaps each left/right joint pair.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .. import _extension
from ..backends import FusedOp, common_device, dtype_check

__all__ = [
    "decode_heatmaps",
    "decode_heatmaps_reference",
    "flip_permutation",
    "DECODE_HEATMAPS",
    "MPII_FLIP_PAIRS",
]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Left/right joint pairs of MPII's 16 joints (rank/lank, rkne/lkne, rhip/lhip, rwri/lwri,
#: relb/lelb, rsho/lsho), 0-based.
MPII_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))


def flip_permutation(num_joints: int, pairs: Sequence[Sequence[int]]) -> list[int]:
    """The joint permutation that swaps each pair in ``pairs``; ValueError on bad pairs."""
    perm = list(range(num_joints))
    seen: set[int] = set()
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"flip pairs must be (a, b) pairs, got {pair!r}")
        a, b = (int(j) for j in pair)
        for j in (a, b):
            if not 0 <= j < num_joints:
                raise ValueError(f"flip pair {pair!r} names joint {j}, outside 0..{num_joints - 1}")
            if j in seen:
                raise ValueError(f"joint {j} appears in more than one flip pair")
            seen.add(j)
        perm[a], perm[b] = b, a
    return perm


def _check(heatmaps: torch.Tensor, flipped: torch.Tensor | None) -> None:
    for name, t in (("heatmaps", heatmaps), ("flipped", flipped)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"decode_heatmaps: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"decode_heatmaps: {name} must be 4-D (N, K, H, W), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"decode_heatmaps: {name} dtype must be one of {SUPPORTED_DTYPES}, got {t.dtype}")
    if heatmaps.shape[-1] == 0 or heatmaps.shape[-2] == 0:
        raise ValueError(f"decode_heatmaps: maps must be non-empty, got shape {tuple(heatmaps.shape)}")
    if flipped is not None:
        if flipped.shape != heatmaps.shape:
            raise ValueError(
                f"decode_heatmaps: flipped must have the shape of heatmaps {tuple(heatmaps.shape)}, "
                f"got {tuple(flipped.shape)}"
            )
        if flipped.dtype != heatmaps.dtype:
            raise TypeError(f"decode_heatmaps: flipped dtype {flipped.dtype} differs from heatmaps {heatmaps.dtype}")
        common_device("decode_heatmaps", (heatmaps, flipped))


def decode_heatmaps_reference(
    heatmaps: torch.Tensor, flipped: torch.Tensor | None, flip_perm: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch twin of the decode kernel; returns ``(coords (N,K,2) f32, maxvals (N,K) f32)``."""
    hm = heatmaps.float()
    if flipped is not None:
        mirrored = flipped.float().flip(-1)
        if len(flip_perm):
            mirrored = mirrored[:, list(flip_perm)]
        hm = (hm + mirrored) * 0.5
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, h * w)
    idx = flat.argmax(dim=-1, keepdim=True)
    maxvals = flat.gather(-1, idx).squeeze(-1)
    x, y = idx % w, idx // w
    interior = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)

    def at(offset: int) -> torch.Tensor:
        return flat.gather(-1, (idx + offset).clamp(0, h * w - 1))

    def step(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return 0.25 * ((after > before).float() - (after < before).float()) * interior

    dx = step(at(-1), at(1))
    dy = step(at(-w), at(w))
    coords = torch.cat((x.float() + dx, y.float() + dy), dim=-1)
    return coords, maxvals


def decode_outputs(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised ``(coords (N,K,2), maxvals (N,K))`` float32 outputs on heatmaps' device."""
    n, k = heatmaps.shape[:2]
    return heatmaps.new_empty((n, k, 2), dtype=torch.float32), heatmaps.new_empty((n, k), dtype=torch.float32)


def _register_library_op() -> None:
    @torch.library.register_fake("shg_fast::decode_heatmaps")
    def _(heatmaps, flipped, flip_perm):
        torch._check(heatmaps.dim() == 4, lambda: "decode_heatmaps needs a 4-D tensor")
        return decode_outputs(heatmaps)


DECODE_HEATMAPS = FusedOp("decode_heatmaps")
DECODE_HEATMAPS.register("reference", decode_heatmaps_reference)
if _extension.load()[0] is not None:
    _register_library_op()
    _check_ext_dtype = dtype_check("decode_heatmaps", SUPPORTED_DTYPES)
    DECODE_HEATMAPS.register("cpu", torch.ops.shg_fast.decode_heatmaps, _check_ext_dtype)
    DECODE_HEATMAPS.register("cuda", torch.ops.shg_fast.decode_heatmaps, _check_ext_dtype)


def decode_heatmaps(
    heatmaps: torch.Tensor,
    flipped: torch.Tensor | None = None,
    flip_pairs: Sequence[Sequence[int]] | None = MPII_FLIP_PAIRS,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode joint positions from heatmaps, with optional fused flip-test averaging.

    Args:
        heatmaps: ``(N, K, H, W)`` heatmaps (float32, float64, float16 or bfloat16).
        flipped: optional ``(N, K, H, W)`` heatmaps of the mirrored image; they are mirrored
            back in x, joints swapped by ``flip_pairs``, and averaged with ``heatmaps``.
        flip_pairs: left/right joint pairs (0-based) swapped for the flip test; default the
            MPII pairs. Ignored without ``flipped``. ``None`` or ``()`` swaps nothing.
        backend: ``'auto'``, ``'reference'``, ``'cpu'``, ``'triton'`` or ``'cuda'``.

    Returns:
        ``coords``: ``(N, K, 2)`` float32 ``(x, y)`` in 0-based heatmap pixels, quarter-pixel
        refined; ``maxvals``: ``(N, K)`` float32, the (averaged) map's maximum.

    Not differentiable: inputs are detached.
    """
    _check(heatmaps, flipped)
    perm: list[int] = []
    if flipped is not None and flip_pairs:
        perm = flip_permutation(heatmaps.shape[1], flip_pairs)
    heatmaps = heatmaps.detach()
    flipped = None if flipped is None else flipped.detach()
    return DECODE_HEATMAPS.run(heatmaps.device, backend, heatmaps, flipped, perm)
