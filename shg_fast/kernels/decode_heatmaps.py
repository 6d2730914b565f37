"""Heatmap argmax with quarter-pixel refinement and optional fused flip-test averaging.

One program per (n, joint) map. The map decoded is ``heatmaps[n, k]`` or, with the flip
test, ``(heatmaps[n, k] + mirror_x(flipped[n, perm[k]])) * 0.5`` in float32. The first
maximum in row-major order wins; NaN counts as the largest value (like ``torch.argmax``).
If the maximum lies strictly inside the map, x moves by ``0.25 * sign(right - left)`` and y
by ``0.25 * sign(below - above)``; a tie or a NaN neighbour gives no move.
"""

import triton
import triton.language as tl


@triton.jit
def _map_values(
    hm_ptr,  # heatmaps of this (n, k) map, offset to [n, k, 0, 0]
    fl_ptr,  # flipped heatmaps offset to [n, perm[k], 0, 0] (read when HAS_FLIP)
    idx,  # flat row-major indices y * W + x into the map
    mask,  # which indices to read
    W,  # map width
    sh_h, sh_w,  # strides of heatmaps' rows and columns
    sf_h, sf_w,  # strides of flipped's rows and columns
    HAS_FLIP: tl.constexpr,  # average with the mirrored flipped map
    FLAT: tl.constexpr,  # heatmaps' rows are contiguous and back to back (sh_w == 1, sh_h == W): offset = idx
):
    y = idx // W
    x = idx % W
    if FLAT:  # contiguous offsets: vector loads
        v = tl.load(hm_ptr + idx, mask=mask, other=float("-inf")).to(tl.float32)
    else:
        v = tl.load(hm_ptr + y * sh_h + x * sh_w, mask=mask, other=float("-inf")).to(tl.float32)
    if HAS_FLIP:
        f = tl.load(fl_ptr + y * sf_h + (W - 1 - x) * sf_w, mask=mask, other=float("-inf")).to(tl.float32)
        v = (v + f) * 0.5
    return v


@triton.jit
def _quarter_step(before, after):
    """0.25 toward the larger neighbour; 0 on a tie or a NaN."""
    return 0.25 * ((after > before).to(tl.float32) - (after < before).to(tl.float32))


@triton.jit
def decode_heatmaps_kernel(
    hm_ptr,  # heatmaps (N, K, H, W) by strides
    fl_ptr,  # flipped heatmaps (N, K, H, W) by strides, read when HAS_FLIP
    perm_ptr,  # (K,) int32 joint permutation for the flip test, read when HAS_FLIP
    coords_ptr,  # (N, K, 2) float32 output, contiguous
    maxvals_ptr,  # (N, K) float32 output, contiguous
    K, H, W,  # sizes
    sh_n, sh_k, sh_h, sh_w,  # strides of heatmaps
    sf_n, sf_k, sf_h, sf_w,  # strides of flipped
    HAS_FLIP: tl.constexpr,  # fuse the flip-test averaging
    FLAT: tl.constexpr,  # heatmaps' maps are row-major contiguous (sh_w == 1, sh_h == W): flat offsets
    BLOCK: tl.constexpr,  # map elements scanned per step
):
    pid = tl.program_id(0)
    n = pid // K
    k = pid % K
    hm = hm_ptr + n.to(tl.int64) * sh_n + k * sh_k
    fl = fl_ptr
    if HAS_FLIP:
        fl = fl_ptr + n.to(tl.int64) * sf_n + tl.load(perm_ptr + k) * sf_k
    size = H * W
    big = size + BLOCK  # larger than every index: "none" for the min-reductions below

    best_idx = tl.zeros((), dtype=tl.int32)
    best_val = tl.full((), float("-inf"), dtype=tl.float32)
    found_nan = tl.zeros((), dtype=tl.int32)
    for start in range(0, size, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        valid = idx < size
        v = _map_values(hm, fl, idx, valid, W, sh_h, sh_w, sf_h, sf_w, HAS_FLIP, FLAT)
        is_nan = v != v
        first_nan = tl.min(tl.where(is_nan & valid, idx, big), axis=0)
        block_max = tl.max(tl.where(is_nan, float("-inf"), v), axis=0)
        first_max = tl.min(tl.where(valid & (v == block_max), idx, big), axis=0)
        take_nan = (found_nan == 0) & (first_nan < big)
        take_max = (found_nan == 0) & (first_nan == big) & (block_max > best_val)
        best_idx = tl.where(take_nan, first_nan, tl.where(take_max, first_max, best_idx))
        best_val = tl.where(take_nan, float("nan"), tl.where(take_max, block_max, best_val))
        found_nan = tl.where(take_nan, 1, found_nan)

    x = best_idx % W
    y = best_idx // W
    interior = (x > 0) & (x < W - 1) & (y > 0) & (y < H - 1)
    left = _map_values(hm, fl, best_idx - 1, interior, W, sh_h, sh_w, sf_h, sf_w, HAS_FLIP, FLAT)
    right = _map_values(hm, fl, best_idx + 1, interior, W, sh_h, sh_w, sf_h, sf_w, HAS_FLIP, FLAT)
    above = _map_values(hm, fl, best_idx - W, interior, W, sh_h, sh_w, sf_h, sf_w, HAS_FLIP, FLAT)
    below = _map_values(hm, fl, best_idx + W, interior, W, sh_h, sh_w, sf_h, sf_w, HAS_FLIP, FLAT)
    fx = x.to(tl.float32) + tl.where(interior, _quarter_step(left, right), 0.0)
    fy = y.to(tl.float32) + tl.where(interior, _quarter_step(above, below), 0.0)
    tl.store(coords_ptr + pid.to(tl.int64) * 2, fx)
    tl.store(coords_ptr + pid.to(tl.int64) * 2 + 1, fy)
    tl.store(maxvals_ptr + pid, best_val)


def decode_block_size(h: int, w: int) -> int:
    """Map elements scanned per step: the whole map up to 4096 (64 x 64, one pass), at least 128."""
    return max(128, min(triton.next_power_of_2(h * w), 4096))
