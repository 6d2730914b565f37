"""Nearest-neighbour 2x upsample plus skip-add: ``out[n, c, h, w] = skip[n, c, h, w] + low[n, c, h // 2, w // 2]``.

Any layout: every tensor is addressed through runtime strides. The flat index walks the
output in the order of its memory layout (channels innermost for channels_last), so the
loads and stores of a dense output are contiguous.
"""

import triton
import triton.language as tl


@triton.jit
def upsample_add_kernel(
    low_ptr,  # (N, C, ceil(H/2), ceil(W/2)) lower-resolution branch, by strides
    skip_ptr,  # (N, C, H, W) skip branch, by strides
    out_ptr,  # (N, C, H, W) output, by strides
    total,  # N * C * H * W
    C, H, W,  # sizes of skip / out
    sl_n, sl_c, sl_h, sl_w,  # strides of low
    ss_n, ss_c, ss_h, ss_w,  # strides of skip
    so_n, so_c, so_h, so_w,  # strides of out
    CHANNELS_LAST: tl.constexpr,  # walk (n, h, w, c) instead of (n, c, h, w)
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    skip = tl.load(skip_ptr + n * ss_n + c * ss_c + h * ss_h + w * ss_w, mask=mask)
    low = tl.load(low_ptr + n * sl_n + c * sl_c + (h // 2) * sl_h + (w // 2) * sl_w, mask=mask)
    # Added in float32 and rounded once: the correctly rounded sum for 16-bit inputs.
    total_ = skip.to(tl.float32) + low.to(tl.float32)
    tl.store(out_ptr + n * so_n + c * so_c + h * so_h + w * so_w, total_.to(out_ptr.dtype.element_ty), mask=mask)


#: Elements per program of upsample_add_kernel.
UPSAMPLE_ADD_BLOCK = 1024
