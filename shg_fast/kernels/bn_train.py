"""Training-mode BatchNorm+ReLU kernels: batch statistics, the BN+ReLU recomputation, its backward.

Every tensor is addressed as ``(N, C, S)`` (``S = H * W``) through three runtime strides, which
covers contiguous NCHW (spatial stride 1) and channels_last (spatial stride C) alike. Tiles are
``(BLOCK_M, BLOCK_C)``: ``BLOCK_M`` positions ``m = n * S + s`` by ``BLOCK_C`` channels. All
arithmetic is float32 whatever the storage dtype.

* :func:`bn_partial_sums_kernel` reduces per channel over ``SPLITS`` interleaved slices of the
  positions, one partial sum per (slice, channel) (the launcher adds the slices):
  forward, ``sum(x - k)`` and ``sum((x - k)^2)`` around a per-channel centre ``k`` (a sample of
  the channel: the shift keeps ``E[(x-k)^2] - E[x-k]^2`` accurate);
  backward, ``sum(t)`` and ``sum(t * (x - mean))`` with ``t = g * (x * scale + shift > 0)``.
* :func:`bn_relu_kernel` is elementwise: forward, ``relu(x * scale + shift)`` in the output
  dtype; backward, ``dx = a * t - b - (x - mean) * c`` with per-channel coefficients.
"""

import triton
import triton.language as tl


@triton.jit
def bn_partial_sums_kernel(
    x_ptr,  # (N, C, S) BN input, by strides
    g_ptr,  # (N, C, S) gradient of the ReLU output, by strides (read when BACKWARD)
    scale_ptr,  # (C,) float32 BN scale weight * invstd (read when BACKWARD: recomputes the ReLU mask)
    shift_ptr,  # (C,) float32 BN shift bias - mean * scale (read when BACKWARD)
    center_ptr,  # (C,) float32 value subtracted from x before summing (forward: a sample; backward: the mean)
    sum1_ptr,  # (SPLITS, C) float32 out: partial sum(x - k) (forward) or sum(t) (backward)
    sum2_ptr,  # (SPLITS, C) float32 out: partial sum((x - k)^2) (forward) or sum(t * (x - mean)) (backward)
    M, C, S,  # positions N * S, channels, spatial size H * W
    sx_n, sx_c, sx_s,  # strides of x
    sg_n, sg_c, sg_s,  # strides of g
    SPLITS: tl.constexpr,  # programs along the positions; slice j takes the blocks j, j + SPLITS, ...
    BACKWARD: tl.constexpr,  # the backward sums instead of the statistics
    BLOCK_M: tl.constexpr,  # positions per tile
    BLOCK_C: tl.constexpr,  # channels per tile
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    center = tl.load(center_ptr + c, mask=c_ok, other=0.0)
    if BACKWARD:
        scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
        shift = tl.load(shift_ptr + c, mask=c_ok, other=0.0)
    acc1 = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for m0 in range(split * BLOCK_M, M, SPLITS * BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m64 = m.to(tl.int64)
        n = m64 // S
        s = m64 % S
        ok = (m < M)[:, None] & c_ok[None, :]
        x = tl.load(x_ptr + (n * sx_n + s * sx_s)[:, None] + c[None, :] * sx_c, mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, x - center[None, :], 0.0)
        if BACKWARD:
            g = tl.load(g_ptr + (n * sg_n + s * sg_s)[:, None] + c[None, :] * sg_c, mask=ok, other=0.0)
            y = x * scale[None, :] + shift[None, :]
            t = tl.where(y > 0, g.to(tl.float32), 0.0)
            acc1 += t
            acc2 += t * d
        else:
            acc1 += d
            acc2 += d * d
    tl.store(sum1_ptr + split * C + c, tl.sum(acc1, axis=0), mask=c_ok)
    tl.store(sum2_ptr + split * C + c, tl.sum(acc2, axis=0), mask=c_ok)


@triton.jit
def bn_relu_kernel(
    x_ptr,  # (N, C, S) BN input, by strides
    g_ptr,  # (N, C, S) gradient of the ReLU output, by strides (read when BACKWARD)
    out_ptr,  # (N, C, S) out, by strides: relu(BN(x)) (forward) or dx (backward)
    scale_ptr,  # (C,) float32 BN scale weight * invstd
    shift_ptr,  # (C,) float32 BN shift bias - mean * scale
    mean_ptr,  # (C,) float32 batch mean (read when BACKWARD)
    coef_a_ptr,  # (C,) float32 weight * invstd (read when BACKWARD)
    coef_b_ptr,  # (C,) float32 weight * invstd * sum(t) / M (read when BACKWARD)
    coef_c_ptr,  # (C,) float32 weight * invstd^2 * sum(t * (x - mean)) / M (read when BACKWARD)
    M, C, S,  # positions N * S, channels, spatial size H * W
    sx_n, sx_c, sx_s,  # strides of x
    sg_n, sg_c, sg_s,  # strides of g
    so_n, so_c, so_s,  # strides of out
    BACKWARD: tl.constexpr,  # dx instead of the activation
    BLOCK_M: tl.constexpr,  # positions per tile
    BLOCK_C: tl.constexpr,  # channels per tile
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = (m < M)[:, None] & c_ok[None, :]
    m64 = m.to(tl.int64)
    n = m64 // S
    s = m64 % S
    x = tl.load(x_ptr + (n * sx_n + s * sx_s)[:, None] + c[None, :] * sx_c, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + c, mask=c_ok, other=0.0)
    y = x * scale[None, :] + shift[None, :]
    if BACKWARD:
        g = tl.load(g_ptr + (n * sg_n + s * sg_s)[:, None] + c[None, :] * sg_c, mask=ok, other=0.0)
        t = tl.where(y > 0, g.to(tl.float32), 0.0)
        mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
        a = tl.load(coef_a_ptr + c, mask=c_ok, other=0.0)
        b = tl.load(coef_b_ptr + c, mask=c_ok, other=0.0)
        k = tl.load(coef_c_ptr + c, mask=c_ok, other=0.0)
        result = a[None, :] * t - b[None, :] - (x - mean[None, :]) * k[None, :]
    else:
        # NaN kept (a plain maximum would turn it into 0).
        result = tl.where(y > 0, y, tl.where(y == y, 0.0, y))
    tl.store(out_ptr + (n * so_n + s * so_s)[:, None] + c[None, :] * so_c,
             result.to(out_ptr.dtype.element_ty), mask=ok)


#: Tile of both kernels: positions x channels.
BN_BLOCK_M = 64
BN_BLOCK_C = 32
#: Slices of the positions in a partial-sum launch: enough programs to fill a GPU with few channels.
BN_SPLITS = 64
