// C++ CPU kernels of the fused ops (same contracts as the Python references).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace shg_fast::cpu {

at::Tensor upsample_add(const at::Tensor& low, const at::Tensor& skip);

std::tuple<at::Tensor, at::Tensor> decode_heatmaps(const at::Tensor& heatmaps,
                                                   const c10::optional<at::Tensor>& flipped,
                                                   at::IntArrayRef flip_perm);

// The eval-mode residual block with ATen ops on the folded weights (arguments as the
// shg_fast::residual_block schema, already checked; pool_input: the block runs on max_pool2d(x, 2, 2)).
at::Tensor residual_block(const at::Tensor& x, const at::Tensor& in_scale, const at::Tensor& in_shift,
                          const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          const at::Tensor& w3, const at::Tensor& b3, const c10::optional<at::Tensor>& ws,
                          const c10::optional<at::Tensor>& bs, const c10::optional<at::Tensor>& upsample,
                          bool pool_input);

// The instruction set the Winograd transforms run with here: "avx2+fma" or "baseline".
std::string winograd_isa();

// Winograd F(4x4, 3x3) weights (C_out, C_in, 3, 3) -> (36, C_in, C_out), transformed in float64.
at::Tensor winograd_weight(const at::Tensor& weight);

// 3x3 convolution, stride 1, padding 1, by Winograd F(4x4, 3x3) on weights from winograd_weight;
// optional bias and ReLU (arguments as the shg_fast::winograd_conv3x3 schema, already checked).
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                            bool relu);
// The same written into out: (N, C_out, H, W) channels_last-contiguous, not overlapping x (checked).
void winograd_conv3x3_out(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                          bool relu, at::Tensor& out);

// 1x1 conv weights (C_out, C_in, 1, 1) float32 -> (ceil(C_out / 16), C_in, 16) panels, zero past C_out.
at::Tensor conv1x1_weight(const at::Tensor& weight);

// 1x1 convolution (stride 1) on panels from conv1x1_weight: x clamped per input channel to
// [clamp_lo, clamp_hi] when given, then bias, add, add_low nearest-upsampled and ReLU as asked
// (float32; arguments as the shg_fast::conv1x1 schema, already checked). conv1x1_out writes into out:
// (N, C_out, H, W) channels_last-contiguous, not overlapping x or add_low (it may be add itself).
at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& weight_p, int64_t out_channels,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                   const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                   const c10::optional<at::Tensor>& add_low, bool relu);
void conv1x1_out(const at::Tensor& x, const at::Tensor& weight_p, int64_t out_channels,
                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                 const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                 const c10::optional<at::Tensor>& add_low, bool relu, at::Tensor& out);

// Memory-efficient training (NCHW-contiguous tensors, arguments as the schemas, already checked):
// relu(x * scale + shift) per channel in dtype; the backward of relu(BN(x)) on batch statistics
// returning (dx, d weight, d bias) with the sums in scale's dtype; the 2x2/2 max-pool's backward.
at::Tensor bn_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, at::ScalarType dtype);
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& scale, const at::Tensor& shift,
                                                                const at::Tensor& mean, const at::Tensor& invstd);
at::Tensor max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& x);

}  // namespace shg_fast::cpu
