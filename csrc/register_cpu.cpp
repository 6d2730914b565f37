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

}  // namespace

TORCH_LIBRARY_IMPL(shg_fast, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("decode_heatmaps", &decode_heatmaps_cpu);
}

}  // namespace shg_fast
