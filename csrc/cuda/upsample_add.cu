// CUDA kernel: out = skip + low[n, c, h / 2, w / 2] (nearest 2x upsample plus skip-add), NCHW or NHWC.
#include "common.cuh"

namespace shg_fast::cuda {
namespace {

constexpr int kThreads = 256;

// One output element per loop step; index_t is int32 when every offset fits, else int64.
template <typename T, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads) upsample_add_kernel(
    const T* __restrict__ low,   // (N, C, Hl, Wl) in the layout of skip
    const T* __restrict__ skip,  // (N, C, H, W), NCHW or NHWC (kChannelsLast)
    T* __restrict__ out,         // like skip
    index_t total,               // N * C * H * W
    index_t C, index_t H, index_t W,
    index_t Hl, index_t Wl) {    // ceil(H / 2), ceil(W / 2)
  using Acc = acc_t<T>;
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t i = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    index_t low_offset;
    if constexpr (kChannelsLast) {  // i = ((n * H + h) * W + w) * C + c
      const index_t c = i % C, w = (i / C) % W, h = (i / (C * W)) % H, n = i / (C * W * H);
      low_offset = ((n * Hl + h / 2) * Wl + w / 2) * C + c;
    } else {  // i = ((n * C + c) * H + h) * W + w
      const index_t w = i % W, h = (i / W) % H, nc = i / (W * H);
      low_offset = (nc * Hl + h / 2) * Wl + w / 2;
    }
    out[i] = from_acc<T>(to_acc<Acc>(skip[i]) + to_acc<Acc>(low[low_offset]));
  }
}

template <typename T, typename index_t>
cudaError_t launch(const void* low, const void* skip, void* out, int64_t N, int64_t C, int64_t H, int64_t W,
                   bool channels_last, cudaStream_t stream) {
  const int64_t total = N * C * H * W;
  const unsigned grid = grid_for(total, kThreads);
  const auto* l = static_cast<const T*>(low);
  const auto* s = static_cast<const T*>(skip);
  auto* o = static_cast<T*>(out);
  const index_t Hl = static_cast<index_t>((H + 1) / 2), Wl = static_cast<index_t>((W + 1) / 2);
  if (channels_last) {
    upsample_add_kernel<T, index_t, true><<<grid, kThreads, 0, stream>>>(l, s, o, total, C, H, W, Hl, Wl);
  } else {
    upsample_add_kernel<T, index_t, false><<<grid, kThreads, 0, stream>>>(l, s, o, total, C, H, W, Hl, Wl);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace shg_fast::cuda

extern "C" cudaError_t shg_upsample_add(const void* low, const void* skip, void* out, int64_t N, int64_t C,
                                        int64_t H, int64_t W, int channels_last, shg_dtype dtype,
                                        cudaStream_t stream) {
  using namespace shg_fast::cuda;
  if (N < 0 || C < 0 || H < 0 || W < 0) return cudaErrorInvalidValue;
  const int64_t total = N * C * H * W;
  if (total == 0) return cudaSuccess;
  // The grid-stride loop adds one stride past the last element: keep that in range too.
  const bool small = total + static_cast<int64_t>(grid_for(total, kThreads)) * kThreads <= kInt32Max;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return small ? launch<T, int32_t>(low, skip, out, N, C, H, W, channels_last != 0, stream)
                 : launch<T, int64_t>(low, skip, out, N, C, H, W, channels_last != 0, stream);
  });
}
