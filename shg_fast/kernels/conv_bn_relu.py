"""Implicit-GEMM convolution with a BN-affine + ReLU prologue and a bias/ReLU/add epilogue.

The GEMM view: M = N * OH * OW output pixels, N_gemm = C_out, K = KH * KW * (C1 + C2).
Each program computes a BLOCK_M x BLOCK_N tile of the output over a range of K steps. The K
loop is one loop over (tap, channel block) steps, so the software pipeline runs through the
whole K range instead of restarting at every tap. A step reads a BLOCK_K channel block of
``x`` (with the prologue) or, past x's blocks, of an optional second input ``x2`` (no
prologue), so ``conv(cat([x, x2], dim=1))`` runs without materialising the concatenation.
With ``PACK_TAPS`` (few input channels, e.g. the 7x7 stem on RGB) a step instead covers
BLOCK_K consecutive (tap, channel) pairs, so the 147 K entries of the stem take 3 steps of 64
rather than 49 steps of one mostly empty channel block.

Programs run along axis 0 over (pixel tile, channel tile), channel tiles fastest. Split-K:
with ``SPLIT_K`` > 1, program (.., s) sums only its share of the K steps and
writes float32 partial sums to a workspace; ``conv_split_k_reduce_kernel`` then adds the
partials in a fixed order (deterministic) and applies the epilogue once. Activations are read
through runtime strides (NHWC / channels_last gives contiguous channel loads); accumulation is
in float32.

Fused max-pool: with ``POOL_X`` (``POOL_X2``, ``POOL_RES``) the stored ``x`` (``x2``, the
residual) is twice the conv's input (output) size, floor, and each element read is the max of
its 2x2 window (stride 2; NaN propagates as in ``torch.max_pool2d``): a residual block whose
input is a max-pool reads the pool's input instead, and the pool needs no launch of its own.
"""

import triton
import triton.language as tl


@triton.jit
def _load_window(
    ptr,  # base pointer
    off,  # element offsets (of each window's top-left element when POOL)
    mask,  # elements to read (others are 0)
    win_h, win_w,  # strides to the window's second row and second column
    POOL: tl.constexpr,  # True: the max of each 2x2 window; False: the element at off
):
    v = tl.load(ptr + off, mask=mask, other=0.0)
    if POOL:  # NaN propagates, as torch.max_pool2d
        v = tl.maximum(v, tl.load(ptr + off + win_w, mask=mask, other=0.0), propagate_nan=tl.PropagateNan.ALL)
        v = tl.maximum(v, tl.load(ptr + off + win_h, mask=mask, other=0.0), propagate_nan=tl.PropagateNan.ALL)
        v = tl.maximum(v, tl.load(ptr + off + win_h + win_w, mask=mask, other=0.0),
                       propagate_nan=tl.PropagateNan.ALL)
    return v


@triton.jit
def _epilogue_store(
    acc,  # (BLOCK_M, BLOCK_N) float32 GEMM sums of this tile
    offs_m,  # (BLOCK_M,) output pixels of the tile (n, oh, ow flattened)
    offs_n,  # (BLOCK_N,) output channels of the tile
    M, C_out, OH, OW,  # sizes: M = N * OH * OW
    bias_ptr,  # (C_out,) bias, read when HAS_BIAS
    res_ptr,  # residual (N, C_out, OH, OW) by strides (2x that size with POOL_RES), read when HAS_RESIDUAL
    up_ptr,  # half-size (N, C_out, ceil(OH/2), ceil(OW/2)) by strides, read when HAS_UPSAMPLE
    out_ptr,  # output (N, C_out, OH, OW) by strides
    sr_n, sr_c, sr_h, sr_w,  # strides of the residual
    su_n, su_c, su_h, su_w,  # strides of the half-size upsample input
    so_n, so_c, so_h, so_w,  # strides of the output
    HAS_BIAS: tl.constexpr, OUT_RELU: tl.constexpr,  # + bias, then ReLU
    HAS_RESIDUAL: tl.constexpr, HAS_UPSAMPLE: tl.constexpr,  # then + residual, then + nearest-2x upsample
    POOL_RES: tl.constexpr,  # the residual added is the 2x2/stride-2 max-pool of the stored one
):
    m_ok = offs_m < M
    n_ok = offs_n < C_out
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if OUT_RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        if POOL_RES:  # window (2 oh .. 2 oh + 1, 2 ow .. 2 ow + 1) of the stored residual
            r_off = (n * sr_n + oh * (2 * sr_h) + ow * (2 * sr_w))[:, None] + offs_n[None, :] * sr_c
        else:
            r_off = (n * sr_n + oh * sr_h + ow * sr_w)[:, None] + offs_n[None, :] * sr_c
        acc = acc + _load_window(res_ptr, r_off, mask, sr_h, sr_w, POOL_RES).to(tl.float32)
    if HAS_UPSAMPLE:
        u_off = (n * su_n + (oh // 2) * su_h + (ow // 2) * su_w)[:, None] + offs_n[None, :] * su_c
        acc = acc + tl.load(up_ptr + u_off, mask=mask, other=0.0).to(tl.float32)
    o_off = (n * so_n + oh * so_h + ow * so_w)[:, None] + offs_n[None, :] * so_c
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_bn_relu_kernel(
    x_ptr,  # input (N, C1, H, W) by strides (2x that size with POOL_X); the prologue applies to it
    x2_ptr,  # optional second input (N, C2, H, W) (2x with POOL_X2), concatenated after x along channels
    w_ptr,  # weight (C_out, C1 + C2, KH, KW) by strides
    bias_ptr,  # (C_out,) bias, read when HAS_BIAS
    scale_ptr,  # (C1,) prologue scale, read when HAS_SCALE
    shift_ptr,  # (C1,) prologue shift, read when HAS_SHIFT
    res_ptr,  # residual (N, C_out, OH, OW) by strides (2x with POOL_RES), read when HAS_RESIDUAL
    up_ptr,  # half-size (N, C_out, ceil(OH/2), ceil(OW/2)) by strides, read when HAS_UPSAMPLE
    out_ptr,  # output (N, C_out, OH, OW) by strides (written when SPLIT_K == 1)
    part_ptr,  # (SPLIT_K, M, C_out) float32 partial sums, contiguous (written when SPLIT_K > 1)
    N, C1, C2, H, W, C_out, OH, OW,  # sizes (H, W: the conv's input, after the max-pool of POOL_X/POOL_X2)
    conv_stride, pad,  # convolution stride and zero padding (same in both axes)
    sx_n, sx_c, sx_h, sx_w,  # strides of x
    sx2_n, sx2_c, sx2_h, sx2_w,  # strides of x2
    sw_o, sw_c, sw_h, sw_w,  # strides of the weight
    sr_n, sr_c, sr_h, sr_w,  # strides of the residual
    su_n, su_c, su_h, su_w,  # strides of the half-size upsample input
    so_n, so_c, so_h, so_w,  # strides of the output
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size
    HAS_X2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_UPSAMPLE: tl.constexpr,
    POOL_X: tl.constexpr, POOL_X2: tl.constexpr, POOL_RES: tl.constexpr,  # read x / x2 / residual 2x2 max-pooled
    ALLOW_TF32: tl.constexpr,  # TF32 products for float32 operands (else exact); no effect on 16-bit ones
    PACK_TAPS: tl.constexpr,  # K steps over flat (tap, channel) pairs of x (no x2): for few input channels
    SPLIT_K: tl.constexpr,  # programs along axis 1 share the K steps; > 1 writes partials to part_ptr
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile sizes
):
    M = N * OH * OW
    tiles_n = tl.cdiv(C_out, BLOCK_N)
    pid_n = tl.program_id(0) % tiles_n  # fastest: the C_out tiles of one pixel tile run together, sharing its loads
    pid_m = tl.program_id(0) // tiles_n
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < C_out
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    ih0 = oh * conv_stride - pad
    iw0 = ow * conv_stride - pad
    PROLOGUE: tl.constexpr = HAS_SCALE or HAS_SHIFT or IN_RELU
    # A pooled input's pixel (ih, iw) is the window at (2 ih, 2 iw): pixel strides double, and the
    # window's other elements lie one stored row / column on (win_*; 0 for an input read as is).
    if POOL_X:
        px_h, px_w, win_h, win_w = 2 * sx_h, 2 * sx_w, sx_h, sx_w
    else:
        px_h, px_w, win_h, win_w = sx_h, sx_w, 0, 0
    if POOL_X2:
        px2_h, px2_w, win2_h, win2_w = 2 * sx2_h, 2 * sx2_w, sx2_h, sx2_w
    else:
        px2_h, px2_w, win2_h, win2_w = sx2_h, sx2_w, 0, 0

    if PACK_TAPS:
        k_total = KH * KW * C1
        k_steps = tl.cdiv(k_total, BLOCK_K)
    else:
        blocks1 = tl.cdiv(C1, BLOCK_K)
        blocks = blocks1
        if HAS_X2:
            blocks = blocks1 + tl.cdiv(C2, BLOCK_K)
        k_steps = KH * KW * blocks
    steps_per_split = tl.cdiv(k_steps, SPLIT_K)
    step_begin = pid_k * steps_per_split
    step_end = tl.minimum(step_begin + steps_per_split, k_steps)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(step_begin, step_end):
        if PACK_TAPS:
            k = step * BLOCK_K + offs_k
            k_ok = k < k_total
            tap = k // C1
            c = k - tap * C1
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0[:, None] + kh[None, :]
            iw = iw0[:, None] + kw[None, :]
            a_mask = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = _load_window(x_ptr, n[:, None] * sx_n + ih * px_h + iw * px_w + c[None, :] * sx_c, a_mask,
                             win_h, win_w, POOL_X)
            c_ok = k_ok
            w_k = c * sw_c + kh * sw_h + kw * sw_w
        else:
            tap = step // blocks
            kb = step - tap * blocks
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0 + kh
            iw = iw0 + kw
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            if HAS_X2:
                first = kb < blocks1  # this step reads x (else x2)
                c = tl.where(first, kb, kb - blocks1) * BLOCK_K + offs_k
                c_ok = c < tl.where(first, C1, C2)
                src = tl.where(first, x_ptr, x2_ptr)
                pix_off = tl.where(first, n * sx_n + ih * px_h + iw * px_w, n * sx2_n + ih * px2_h + iw * px2_w)
                c_stride = tl.where(first, sx_c, sx2_c)
                step_h = tl.where(first, win_h, win2_h)
                step_w = tl.where(first, win_w, win2_w)
                w_k = (tl.where(first, 0, C1) + c) * sw_c + kh * sw_h + kw * sw_w
            else:
                c = kb * BLOCK_K + offs_k
                c_ok = c < C1
                src = x_ptr
                pix_off = n * sx_n + ih * px_h + iw * px_w
                c_stride = sx_c
                step_h, step_w = win_h, win_w
                w_k = c * sw_c + kh * sw_h + kw * sw_w
            a_mask = pix_ok[:, None] & c_ok[None, :]
            # With one input pooled and the other not, the latter's window is one element read four times.
            a = _load_window(src, pix_off[:, None] + c[None, :] * c_stride, a_mask, step_h, step_w, POOL_X or POOL_X2)
        if PROLOGUE:
            t = a.to(tl.float32)
            p_ok = c_ok
            if HAS_X2:
                p_ok = c < tl.where(first, C1, 0)  # prologue parameters exist for x's channels only
            if HAS_SCALE:
                t = t * tl.load(scale_ptr + c, mask=p_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_SHIFT:
                t = t + tl.load(shift_ptr + c, mask=p_ok, other=0.0).to(tl.float32)[None, :]
            if IN_RELU:
                t = tl.maximum(t, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
            if HAS_X2:  # the second input has no prologue
                t = tl.where(first, t, a.to(tl.float32))
            a = tl.where(a_mask, t, 0.0)  # padding and out-of-range entries stay zero
        b = tl.load(w_ptr + offs_n[None, :] * sw_o + w_k[:, None], mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if ALLOW_TF32:
            acc = tl.dot(a.to(b.dtype), b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a.to(b.dtype), b, acc, input_precision="ieee")

    if SPLIT_K == 1:
        _epilogue_store(acc, offs_m, offs_n, M, C_out, OH, OW, bias_ptr, res_ptr, up_ptr, out_ptr,
                        sr_n, sr_c, sr_h, sr_w, su_n, su_c, su_h, su_w, so_n, so_c, so_h, so_w,
                        HAS_BIAS, OUT_RELU, HAS_RESIDUAL, HAS_UPSAMPLE, POOL_RES)
    else:
        p_off = pid_k * M * C_out + offs_m[:, None] * C_out + offs_n[None, :]
        tl.store(part_ptr + p_off, acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def conv_split_k_reduce_kernel(
    part_ptr,  # (SPLIT_K, M, C_out) float32 partial sums, contiguous
    bias_ptr,  # (C_out,) bias, read when HAS_BIAS
    res_ptr,  # residual (N, C_out, OH, OW) by strides (2x with POOL_RES), read when HAS_RESIDUAL
    up_ptr,  # half-size (N, C_out, ceil(OH/2), ceil(OW/2)) by strides, read when HAS_UPSAMPLE
    out_ptr,  # output (N, C_out, OH, OW) by strides
    M, C_out, OH, OW,  # sizes: M = N * OH * OW
    sr_n, sr_c, sr_h, sr_w,  # strides of the residual
    su_n, su_c, su_h, su_w,  # strides of the half-size upsample input
    so_n, so_c, so_h, so_w,  # strides of the output
    HAS_BIAS: tl.constexpr, OUT_RELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_UPSAMPLE: tl.constexpr,
    POOL_RES: tl.constexpr,  # the residual added is the 2x2/stride-2 max-pool of the stored one
    SPLIT_K: tl.constexpr,  # partials to add, in order 0..SPLIT_K-1 (deterministic)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  # tile sizes
):
    tiles_n = tl.cdiv(C_out, BLOCK_N)
    offs_m = (tl.program_id(0) // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tl.program_id(0) % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < C_out)[None, :]
    p_off = offs_m[:, None] * C_out + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * M * C_out + p_off, mask=mask, other=0.0)
    _epilogue_store(acc, offs_m, offs_n, M, C_out, OH, OW, bias_ptr, res_ptr, up_ptr, out_ptr,
                    sr_n, sr_c, sr_h, sr_w, su_n, su_c, su_h, su_w, so_n, so_c, so_h, so_w,
                    HAS_BIAS, OUT_RELU, HAS_RESIDUAL, HAS_UPSAMPLE, POOL_RES)


#: Streaming multiprocessors of the H200/H100 SXM: the split-K target when no device is at hand.
H200_SMS = 132
#: Fewest K steps a split-K share gets (below this the partial-sum traffic outweighs the gain).
MIN_STEPS_PER_SPLIT = 4
#: Largest split-K factor (a compile-time constant of the kernels: one variant per value).
MAX_SPLIT_K = 8
#: Reduce-kernel tile (rows x channels).
REDUCE_BLOCK = (64, 64)


def k_steps(c1: int, c2: int, kh: int, kw: int, block_k: int, pack_taps: bool) -> int:
    """K steps of one whole-K conv tile (the kernel's loop count when SPLIT_K is 1)."""
    if pack_taps:
        return triton.cdiv(kh * kw * c1, block_k)
    return kh * kw * (triton.cdiv(c1, block_k) + (triton.cdiv(c2, block_k) if c2 else 0))


def conv_config(m: int, c1: int, c2: int, c_out: int, kh: int, kw: int, element_size: int, tf32: bool,
                sms: int = H200_SMS, pooled: bool = False) -> dict:
    """Tiles, warps, pipeline depth and split-K of one conv launch (a rule, not measured on a GPU).

    ``m`` output pixels (N * OH * OW), ``c1`` + ``c2`` input channels, ``c_out`` outputs, a
    ``kh`` x ``kw`` kernel, operands of ``element_size`` bytes (4: float32, exact unless
    ``tf32``), ``sms`` multiprocessors to fill. Per dtype, sized so that ptxas reports no
    spills for sm_90a (scripts/compiled_code_report.py): 16-bit and TF32 tiles are warpgroup-MMA
    shaped (BLOCK_M 64 or 128 per 4 warps); exact float32 runs on FMA units with a smaller tile.
    When the output tiles would leave SMs idle, the tiles shrink to 64 x 64 and then split-K
    divides K (each share at least MIN_STEPS_PER_SPLIT steps). ``pooled`` (x or x2 read 2x2
    max-pooled): BLOCK_K is halved, since the software pipeline stages each of a window's four
    loads in shared memory (with the full BLOCK_K the 16-bit 128 x 128 tile needs 279 KB, over
    sm_90's 227 KB, and the 128 x 64 one 238 KB and spills).
    """
    pack = c2 == 0 and c1 < 16 and kh * kw > 1
    if element_size >= 4 and not tf32:
        block_m, block_n, block_k, warps, stages = 64, 64, 16, 4, 3
    else:
        block_k = 64 if element_size == 2 else 32
        block_n = max(16, min(triton.next_power_of_2(c_out), 128))
        tiles_128 = triton.cdiv(m, 128) * triton.cdiv(c_out, block_n)
        block_m = 128 if tiles_128 >= sms else 64
        if block_n == 128 and triton.cdiv(m, 64) * triton.cdiv(c_out, 128) < sms:  # more CTAs before split-K
            block_n = 64
        warps = 8 if block_m * block_n >= 128 * 128 else 4
        stages = 4 if element_size == 2 else 3
    if pack:  # its (BLOCK_M, BLOCK_K) tap and pixel indices cost registers: small K block, 64 rows a warpgroup
        block_k = min(block_k, 32)
        warps = max(warps, block_m // 16)
    else:
        block_k = max(16, min(block_k, triton.next_power_of_2(max(c1, c2))))
    if pooled:
        block_k = max(16, block_k // 2)
    steps = k_steps(c1, c2, kh, kw, block_k, pack)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(c_out, block_n)
    split = 1
    while split < MAX_SPLIT_K and tiles * split * 2 <= sms and steps >= 2 * split * MIN_STEPS_PER_SPLIT:
        split *= 2
    if split > 1 and split * m * c_out >= 2**31:  # partial-sum offsets are int32
        split = 1
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PACK_TAPS=pack, SPLIT_K=split,
                num_warps=warps, num_stages=stages)
