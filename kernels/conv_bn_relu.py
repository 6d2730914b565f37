"""Implicit-GEMM convolution with a BN-affine + ReLU prologue and a bias/ReLU/add epilogue.

The GEMM view: M = N * OH * OW output pixels, N_gemm = C_out, K = KH * KW * (C1 + C2).
Each program computes a BLOCK_M x BLOCK_N tile of the output; the K loop walks the kernel
taps and, per tap, the channels of ``x`` (with the prologue) and then of an optional second
input ``x2`` (no prologue), so ``conv(cat([x, x2], dim=1))`` runs without materialising the
concatenation. Activations are read through runtime strides (NHWC / channels_last gives
contiguous channel loads); accumulation is in float32.
"""

import triton
import triton.language as tl


@triton.jit
def _accumulate_channels(
    acc,  # (BLOCK_M, BLOCK_N) float32 accumulator
    src_ptr,  # pointer to the activation tensor read at this tap, (N, C, H, W) by strides
    pix_off,  # (BLOCK_M,) element offset of each output pixel's input pixel n, ih, iw in src
    pix_ok,  # (BLOCK_M,) the input pixel exists (inside the image; not padding, not past M)
    stride_c,  # src's channel stride
    C,  # channels of src
    w_ptr,  # pointer to weight[0, c_base, kh, kw] for this tap and this source
    stride_wo,  # weight's output-channel stride
    stride_wc,  # weight's input-channel stride
    offs_n,  # (BLOCK_N,) output channels of this tile
    n_ok,  # (BLOCK_N,) offs_n < C_out
    scale_ptr,  # (C,) prologue scale (read only when HAS_SCALE)
    shift_ptr,  # (C,) prologue shift (read only when HAS_SHIFT)
    HAS_SCALE: tl.constexpr,  # multiply by scale[c] as the input is loaded
    HAS_SHIFT: tl.constexpr,  # then add shift[c]
    IN_RELU: tl.constexpr,  # then ReLU
    ALLOW_TF32: tl.constexpr,  # float32 operands: TF32 products instead of exact ("ieee") ones
    BLOCK_K: tl.constexpr,  # channels per step; a power of two >= 16 (tl.dot minimum)
):
    offs_k = tl.arange(0, BLOCK_K)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + offs_k
        c_ok = c < C
        a_mask = pix_ok[:, None] & c_ok[None, :]
        a = tl.load(src_ptr + pix_off[:, None] + c[None, :] * stride_c, mask=a_mask, other=0.0)
        if HAS_SCALE or HAS_SHIFT or IN_RELU:
            a = a.to(tl.float32)
            if HAS_SCALE:
                a = a * tl.load(scale_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_SHIFT:
                a = a + tl.load(shift_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            if IN_RELU:
                a = tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
            # Padding (and out-of-range rows/channels) must stay zero after the affine.
            a = tl.where(a_mask, a, 0.0)
        b = tl.load(w_ptr + offs_n[None, :] * stride_wo + c[:, None] * stride_wc,
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if ALLOW_TF32:
            acc = tl.dot(a.to(b.dtype), b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a.to(b.dtype), b, acc, input_precision="ieee")
    return acc


@triton.jit
def conv_bn_relu_kernel(
    x_ptr,  # input (N, C1, H, W) by strides; the prologue applies to it
    x2_ptr,  # optional second input (N, C2, H, W), concatenated after x along channels
    w_ptr,  # weight (C_out, C1 + C2, KH, KW) by strides
    bias_ptr,  # (C_out,) bias, read when HAS_BIAS
    scale_ptr,  # (C1,) prologue scale, read when HAS_SCALE
    shift_ptr,  # (C1,) prologue shift, read when HAS_SHIFT
    res_ptr,  # residual (N, C_out, OH, OW) by strides, read when HAS_RESIDUAL
    up_ptr,  # half-size (N, C_out, ceil(OH/2), ceil(OW/2)) by strides, read when HAS_UPSAMPLE
    out_ptr,  # output (N, C_out, OH, OW) by strides
    N, C1, C2, H, W, C_out, OH, OW,  # sizes
    conv_stride, pad,  # convolution stride and zero padding (same in both axes)
    sx_n, sx_c, sx_h, sx_w,  # strides of x
    sx2_n, sx2_c, sx2_h, sx2_w,  # strides of x2
    sw_o, sw_c, sw_h, sw_w,  # strides of the weight
    sr_n, sr_c, sr_h, sr_w,  # strides of the residual
    su_n, su_c, su_h, su_w,  # strides of the half-size upsample input
    so_n, so_c, so_h, so_w,  # strides of the output
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size: unrolled tap loop
    HAS_X2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_UPSAMPLE: tl.constexpr,
    ALLOW_TF32: tl.constexpr,  # TF32 products for float32 operands (else exact); no effect on 16-bit ones
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile sizes
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < N * OH * OW
    n_ok = offs_n < C_out
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = oh * conv_stride - pad + kh
        for kw in tl.static_range(KW):
            iw = ow * conv_stride - pad + kw
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            w_tap = w_ptr + kh * sw_h + kw * sw_w
            acc = _accumulate_channels(
                acc, x_ptr, n * sx_n + ih * sx_h + iw * sx_w, pix_ok, sx_c, C1,
                w_tap, sw_o, sw_c, offs_n, n_ok, scale_ptr, shift_ptr,
                HAS_SCALE, HAS_SHIFT, IN_RELU, ALLOW_TF32, BLOCK_K)
            if HAS_X2:
                acc = _accumulate_channels(
                    acc, x2_ptr, n * sx2_n + ih * sx2_h + iw * sx2_w, pix_ok, sx2_c, C2,
                    w_tap + C1 * sw_c, sw_o, sw_c, offs_n, n_ok, scale_ptr, shift_ptr,
                    False, False, False, ALLOW_TF32, BLOCK_K)

    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if OUT_RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        r_off = (n * sr_n + oh * sr_h + ow * sr_w)[:, None] + offs_n[None, :] * sr_c
        acc = acc + tl.load(res_ptr + r_off, mask=mask, other=0.0).to(tl.float32)
    if HAS_UPSAMPLE:
        u_off = (n * su_n + (oh // 2) * su_h + (ow // 2) * su_w)[:, None] + offs_n[None, :] * su_c
        acc = acc + tl.load(up_ptr + u_off, mask=mask, other=0.0).to(tl.float32)
    o_off = (n * so_n + oh * so_h + ow * so_w)[:, None] + offs_n[None, :] * so_c
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


def conv_block_sizes(m: int, c_in: int, c_out: int, element_size: int) -> dict:
    """Tile sizes and launch options for a conv with ``m`` output pixels (a small heuristic).

    BLOCK_K follows the channel count (at least 16, tl.dot's minimum), capped lower for 4-byte
    operands to bound shared memory; BLOCK_N covers up to 128 output channels; BLOCK_M is
    128 when there are enough pixels to fill the GPU, else 64.
    """
    block_k = max(16, min(triton.next_power_of_2(c_in), 32 if element_size >= 4 else 64))
    block_n = max(16, min(triton.next_power_of_2(c_out), 128))
    block_m = 128 if m >= 128 * 64 else 64
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=3)
