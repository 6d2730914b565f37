// CPU registrations: argument checks, then the kernels in csrc/cpu.
#include <torch/library.h>

#include "checks.h"
#include "cpu/kernels.h"

namespace shg_fast {
namespace {

at::Tensor upsample_add_cpu(const at::Tensor& low, const at::Tensor& skip) {
  check_upsample_add(low, skip);
  return cpu::upsample_add(low, skip);
}

std::tuple<at::Tensor, at::Tensor> decode_heatmaps_cpu(const at::Tensor& heatmaps,
                                                       const c10::optional<at::Tensor>& flipped,
                                                       at::IntArrayRef flip_perm) {
  check_decode_heatmaps(heatmaps, flipped, flip_perm);
  return cpu::decode_heatmaps(heatmaps, flipped, flip_perm);
}

at::Tensor residual_block_cpu(const at::Tensor& x, const at::Tensor& in_scale, const at::Tensor& in_shift,
                              const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                              const at::Tensor& w3, const at::Tensor& b3, const c10::optional<at::Tensor>& ws,
                              const c10::optional<at::Tensor>& bs, const c10::optional<at::Tensor>& upsample,
                              bool pool_input) {
  check_residual_block(x, in_scale, in_shift, w1, b1, w2, b2, w3, b3, ws, bs, upsample, pool_input);
  return cpu::residual_block(x, in_scale, in_shift, w1, b1, w2, b2, w3, b3, ws, bs, upsample, pool_input);
}

at::Tensor winograd_weight_cpu(const at::Tensor& weight) {
  check_winograd_weight(weight);
  return cpu::winograd_weight(weight);
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                                bool relu) {
  check_winograd_conv3x3(x, weight_t, bias);
  return cpu::winograd_conv3x3(x, weight_t, bias, relu);
}

at::Tensor conv1x1_weight_cpu(const at::Tensor& weight) {
  check_conv1x1_weight(weight);
  return cpu::conv1x1_weight(weight);
}

at::Tensor conv1x1_cpu(const at::Tensor& x, const at::Tensor& weight_p, int64_t out_channels,
                       const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                       const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                       const c10::optional<at::Tensor>& add_low, bool relu) {
  check_conv1x1(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low);
  return cpu::conv1x1(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low, relu);
}

void conv1x1_out_cpu(const at::Tensor& x, const at::Tensor& weight_p, int64_t out_channels,
                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                     const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                     const c10::optional<at::Tensor>& add_low, bool relu, at::Tensor& out) {
  check_conv1x1(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low);
  check_out("conv1x1_out", out, {x.size(0), out_channels, x.size(2), x.size(3)}, at::kFloat);
  check_no_overlap("conv1x1_out", out, x, "x");
  if (add_low.has_value()) {
    check_no_overlap("conv1x1_out", out, *add_low, "add_low");
  }
  if (add.has_value()) {
    check_no_overlap("conv1x1_out", out, *add, "add (unless it is out itself)", /*allow_same=*/true);
  }
  cpu::conv1x1_out(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low, relu, out);
}

void winograd_conv3x3_out_cpu(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                              bool relu, at::Tensor& out) {
  check_winograd_conv3x3(x, weight_t, bias);
  check_out("winograd_conv3x3_out", out, {x.size(0), weight_t.size(2), x.size(2), x.size(3)}, x.scalar_type());
  check_no_overlap("winograd_conv3x3_out", out, x, "x");
  cpu::winograd_conv3x3_out(x, weight_t, bias, relu, out);
}

at::Tensor bn_relu_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, at::ScalarType dtype) {
  check_bn_relu(x, scale, shift, dtype);
  return cpu::bn_relu(x, scale, shift, dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                    const at::Tensor& scale, const at::Tensor& shift,
                                                                    const at::Tensor& mean, const at::Tensor& invstd) {
  check_bn_relu_backward(grad, x, scale, shift, mean, invstd);
  return cpu::bn_relu_backward(grad, x, scale, shift, mean, invstd);
}

at::Tensor max_pool2x2_backward_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_max_pool2x2_backward(grad, x);
  return cpu::max_pool2x2_backward(grad, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(shg_fast, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("decode_heatmaps", &decode_heatmaps_cpu);
  m.impl("residual_block", &residual_block_cpu);
  m.impl("winograd_weight", &winograd_weight_cpu);
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
  m.impl("winograd_conv3x3_out", &winograd_conv3x3_out_cpu);
  m.impl("conv1x1_weight", &conv1x1_weight_cpu);
  m.impl("conv1x1", &conv1x1_cpu);
  m.impl("conv1x1_out", &conv1x1_out_cpu);
  m.impl("bn_relu", &bn_relu_cpu);
  m.impl("bn_relu_backward", &bn_relu_backward_cpu);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward_cpu);
}

}  // namespace shg_fast
