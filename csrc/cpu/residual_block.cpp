// CPU kernel of the eval-mode residual block: ATen convolutions on the folded weights, in the
// order of the reference twin (shg_fast.ops.residual_block_reference).
#include <ATen/ATen.h>

#include "../checks.h"
#include "kernels.h"

namespace shg_fast::cpu {

at::Tensor residual_block(const at::Tensor& x_in, const at::Tensor& in_scale, const at::Tensor& in_shift,
                          const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          const at::Tensor& w3, const at::Tensor& b3, const c10::optional<at::Tensor>& ws,
                          const c10::optional<at::Tensor>& bs, const c10::optional<at::Tensor>& upsample,
                          bool pool_input) {
  const auto format = prefers_channels_last(x_in) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // ATen's max-pool propagates NaN, as the op's contract asks.
  const at::Tensor x = pool_input ? at::max_pool2d(x_in, {2, 2}, {2, 2}) : x_in;
  const at::Tensor a = at::relu(x * in_scale.view({1, -1, 1, 1}) + in_shift.view({1, -1, 1, 1}));
  const at::Tensor h1 = at::relu(at::conv2d(a, w1, b1));
  const at::Tensor h2 = at::relu(at::conv2d(h1, w2, b2, /*stride=*/1, /*padding=*/1));
  at::Tensor out = at::conv2d(h2, w3, b3);
  out = ws.has_value() ? out + at::conv2d(x, *ws, *bs) : out + x;
  if (upsample.has_value()) {
    out = upsample_add(*upsample, out.contiguous(format));
  }
  return out.contiguous(format);
}

}  // namespace shg_fast::cpu
