// CPU kernel: per (n, k) map, first maximum (NaN counts as largest) with quarter-pixel
// refinement; optional flip-test averaging in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "kernels.h"

namespace shg_fast::cpu {
namespace {

// -1, 0 or +1 as after > before, a tie (or a NaN), or after < before.
inline float quarter_step(float before, float after) {
  return after > before ? 0.25f : (after < before ? -0.25f : 0.0f);
}

// Decode one H x W float map: writes (x, y) to coord and the maximum to maxval.
void decode_map(const float* v, int64_t H, int64_t W, float* coord, float* maxval) {
  int64_t best = 0;
  float best_value = v[0];
  for (int64_t i = 1; i < H * W; ++i) {
    const float x = v[i];
    if (best_value == best_value && (x > best_value || x != x)) {
      best = i;
      best_value = x;
    }
  }
  const int64_t x = best % W, y = best / W;
  float fx = static_cast<float>(x), fy = static_cast<float>(y);
  if (x > 0 && x < W - 1 && y > 0 && y < H - 1) {
    fx += quarter_step(v[best - 1], v[best + 1]);
    fy += quarter_step(v[best - W], v[best + W]);
  }
  coord[0] = fx;
  coord[1] = fy;
  *maxval = best_value;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> decode_heatmaps(const at::Tensor& heatmaps_in,
                                                   const c10::optional<at::Tensor>& flipped_in,
                                                   at::IntArrayRef flip_perm) {
  const at::Tensor heatmaps = heatmaps_in.contiguous();
  const at::Tensor flipped = flipped_in.has_value() ? flipped_in->contiguous() : at::Tensor();
  const int64_t N = heatmaps.size(0), K = heatmaps.size(1), H = heatmaps.size(2), W = heatmaps.size(3);
  const auto f32 = heatmaps.options().dtype(at::kFloat);
  at::Tensor coords = at::empty({N, K, 2}, f32);
  at::Tensor maxvals = at::empty({N, K}, f32);
  const std::vector<int64_t> perm(flip_perm.begin(), flip_perm.end());
  float* coord_ptr = coords.mutable_data_ptr<float>();
  float* max_ptr = maxvals.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "decode_heatmaps_cpu", [&] {
    const scalar_t* hm = heatmaps.const_data_ptr<scalar_t>();
    const scalar_t* fl = flipped.defined() ? flipped.const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> map(H * W);
      for (int64_t m = begin; m < end; ++m) {  // m = n * K + k
        const scalar_t* src = hm + m * H * W;
        if (fl == nullptr) {
          for (int64_t i = 0; i < H * W; ++i) map[i] = static_cast<float>(src[i]);
        } else {
          const int64_t n = m / K, k = m % K;
          const int64_t kf = perm.empty() ? k : perm[k];
          const scalar_t* mirror = fl + (n * K + kf) * H * W;
          for (int64_t y = 0; y < H; ++y) {
            for (int64_t x = 0; x < W; ++x) {
              map[y * W + x] =
                  (static_cast<float>(src[y * W + x]) + static_cast<float>(mirror[y * W + (W - 1 - x)])) * 0.5f;
            }
          }
        }
        decode_map(map.data(), H, W, coord_ptr + 2 * m, max_ptr + m);
      }
    });
  });
  return {coords, maxvals};
}

}  // namespace shg_fast::cpu
