// CPU kernel: out = skip + low[n, c, h / 2, w / 2], in skip's memory format (NCHW or NHWC).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../checks.h"
#include "kernels.h"

namespace shg_fast::cpu {
namespace {

// Work per parallel_for chunk, in elements, so small maps are not split across threads.
constexpr int64_t kGrainElements = 32768;

template <typename scalar_t>
void upsample_add_nchw(const scalar_t* low, const scalar_t* skip, scalar_t* out, int64_t rows, int64_t H,
                       int64_t W, int64_t Hl, int64_t Wl) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(W, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // r = (n * C + c) * H + h
      const int64_t nc = r / H, h = r % H;
      const scalar_t* s = skip + r * W;
      const scalar_t* l = low + (nc * Hl + h / 2) * Wl;
      scalar_t* o = out + r * W;
      // Pairs of output columns share one low value: this form vectorises (w >> 1 indexing does not).
      const int64_t pairs = W / 2;
      for (int64_t j = 0; j < pairs; ++j) {
        const acc_t v = static_cast<acc_t>(l[j]);
        o[2 * j] = static_cast<scalar_t>(static_cast<acc_t>(s[2 * j]) + v);
        o[2 * j + 1] = static_cast<scalar_t>(static_cast<acc_t>(s[2 * j + 1]) + v);
      }
      if (W % 2 == 1) {
        o[W - 1] = static_cast<scalar_t>(static_cast<acc_t>(s[W - 1]) + static_cast<acc_t>(l[pairs]));
      }
    }
  });
}

template <typename scalar_t>
void upsample_add_nhwc(const scalar_t* low, const scalar_t* skip, scalar_t* out, int64_t rows, int64_t H,
                       int64_t W, int64_t C, int64_t Hl, int64_t Wl) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(W * C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // r = n * H + h
      const int64_t n = r / H, h = r % H;
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t* s = skip + (r * W + w) * C;
        const scalar_t* l = low + ((n * Hl + h / 2) * Wl + w / 2) * C;
        scalar_t* o = out + (r * W + w) * C;
        for (int64_t c = 0; c < C; ++c) {
          o[c] = static_cast<scalar_t>(static_cast<acc_t>(s[c]) + static_cast<acc_t>(l[c]));
        }
      }
    }
  });
}

}  // namespace

at::Tensor upsample_add(const at::Tensor& low_in, const at::Tensor& skip_in) {
  const bool nhwc = prefers_channels_last(skip_in);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor skip = skip_in.contiguous(format);
  const at::Tensor low = low_in.contiguous(format);
  at::Tensor out = at::empty_like(skip, format);
  const int64_t N = skip.size(0), C = skip.size(1), H = skip.size(2), W = skip.size(3);
  const int64_t Hl = low.size(2), Wl = low.size(3);
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, skip.scalar_type(), "upsample_add_cpu", [&] {
    if (nhwc) {
      upsample_add_nhwc(low.const_data_ptr<scalar_t>(), skip.const_data_ptr<scalar_t>(),
                        out.mutable_data_ptr<scalar_t>(), N * H, H, W, C, Hl, Wl);
    } else {
      upsample_add_nchw(low.const_data_ptr<scalar_t>(), skip.const_data_ptr<scalar_t>(),
                        out.mutable_data_ptr<scalar_t>(), N * C * H, H, W, Hl, Wl);
    }
  });
  return out;
}

}  // namespace shg_fast::cpu
