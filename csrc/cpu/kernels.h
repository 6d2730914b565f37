// C++ CPU kernels of the fused ops (same contracts as the Python references).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace shg_fast::cpu {

at::Tensor upsample_add(const at::Tensor& low, const at::Tensor& skip);

std::tuple<at::Tensor, at::Tensor> decode_heatmaps(const at::Tensor& heatmaps,
                                                   const c10::optional<at::Tensor>& flipped,
                                                   at::IntArrayRef flip_perm);

// The eval-mode residual block with ATen ops on the folded weights (arguments as the
// shg_fast::residual_block schema, already checked).
at::Tensor residual_block(const at::Tensor& x, const at::Tensor& in_scale, const at::Tensor& in_shift,
                          const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          const at::Tensor& w3, const at::Tensor& b3, const c10::optional<at::Tensor>& ws,
                          const c10::optional<at::Tensor>& bs, const c10::optional<at::Tensor>& upsample);

}  // namespace shg_fast::cpu
