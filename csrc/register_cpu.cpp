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
                              const c10::optional<at::Tensor>& bs, const c10::optional<at::Tensor>& upsample) {
  check_residual_block(x, in_scale, in_shift, w1, b1, w2, b2, w3, b3, ws, bs, upsample);
  return cpu::residual_block(x, in_scale, in_shift, w1, b1, w2, b2, w3, b3, ws, bs, upsample);
}

}  // namespace

TORCH_LIBRARY_IMPL(shg_fast, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("decode_heatmaps", &decode_heatmaps_cpu);
  m.impl("residual_block", &residual_block_cpu);
}

}  // namespace shg_fast
