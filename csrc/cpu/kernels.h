// C++ CPU kernels of the fused ops (same contracts as the Python references).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace shg_fast::cpu {

at::Tensor upsample_add(const at::Tensor& low, const at::Tensor& skip);

std::tuple<at::Tensor, at::Tensor> decode_heatmaps(const at::Tensor& heatmaps,
                                                   const c10::optional<at::Tensor>& flipped,
                                                   at::IntArrayRef flip_perm);

}  // namespace shg_fast::cpu
