// CUDA kernel: heatmap argmax with quarter-pixel refinement and optional flip-test averaging,
// one thread block per (n, k) map, one pass over it (16-byte loads when rows allow, 32-bit
// indexing when offsets fit, the flip permutation in the kernel's parameters). Same results as csrc/cpu/decode_heatmaps.cpp: the map is
// read as float32 (flip average (a + b) * 0.5 in float32), the first maximum in row-major order
// wins, NaN counts as the largest value, and an interior peak moves by 0.25 towards the larger
// neighbour on each axis (no move on a tie or a NaN neighbour).
#include "common.cuh"

namespace shg_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Element strides of a 4-D tensor.
template <typename index_t>
struct Strides4 {
  index_t n, k, h, w;
};

// The flip test's joint permutation, passed by value in the kernel's parameters (no device copy).
struct FlipPerm {
  int32_t joint[kMaxFlipJoints];
};

// A candidate maximum: value and row-major position in the map (-1: no candidate yet).
template <typename index_t>
struct Peak {
  float value;
  index_t index;
};

// True when a beats b: any candidate beats none; NaN beats numbers; larger beats smaller;
// on equal values (or two NaNs) the earlier position wins.
template <typename index_t>
__device__ __forceinline__ bool beats(Peak<index_t> a, Peak<index_t> b) {
  if (b.index < 0) return a.index >= 0;
  if (a.index < 0) return false;
  const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
  if (a_nan || b_nan) return a_nan && (!b_nan || a.index < b.index);
  if (a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

__device__ __forceinline__ float quarter_step(float before, float after) {
  return after > before ? 0.25f : (after < before ? -0.25f : 0.0f);
}

// kVec consecutive elements of T as one aligned load (16 bytes for float x4 and 16-bit x8).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// index_t is int32 when every offset fits (one 32-bit divide per vector), else int64.
// kVec > 1 needs unit column strides, W % kVec == 0 and rows aligned to kVec elements
// (checked by the launcher): each thread then reads kVec columns of a row per load, and the
// mirrored kVec columns of the flipped map, reversed.
template <typename T, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads) decode_heatmaps_kernel(
    const T* __restrict__ heatmaps,  // (N, K, H, W), strides hs
    Strides4<index_t> hs,            // element strides of heatmaps
    const T* __restrict__ flipped,   // (N, K, H, W) heatmaps of the mirrored image, or nullptr
    Strides4<index_t> fs,            // element strides of flipped
    const FlipPerm perm,             // joint permutation for flipped (used when flipped is set)
    index_t K, index_t H, index_t W,  // maps per image and map size
    float* __restrict__ coords,       // (N, K, 2) contiguous: (x, y) per map
    float* __restrict__ maxvals) {    // (N, K) contiguous
  const index_t m = blockIdx.x;  // m = n * K + k
  const index_t n = m / K, k = m % K;
  const T* map = heatmaps + n * hs.n + k * hs.k;
  const T* mirror = flipped == nullptr ? nullptr : flipped + n * fs.n + static_cast<index_t>(perm.joint[k]) * fs.k;
  auto value = [&](index_t y, index_t x) -> float {
    const float v = to_acc<float>(map[y * hs.h + x * hs.w]);
    if (mirror == nullptr) return v;
    return __fmul_rn(__fadd_rn(v, to_acc<float>(mirror[y * fs.h + (W - 1 - x) * fs.w])), 0.5f);
  };

  Peak<index_t> best{0.0f, -1};
  const index_t vectors = H * (W / kVec);
  const index_t row_vectors = W / kVec;
  for (index_t i = threadIdx.x; i < vectors; i += kThreads) {  // increasing i: ties keep the earlier one
    const index_t y = i / row_vectors, x0 = (i - y * row_vectors) * kVec;
    float v[kVec];
    if constexpr (kVec == 1) {
      v[0] = value(y, x0);
    } else {
      const Pack<T, kVec> a = *reinterpret_cast<const Pack<T, kVec>*>(map + y * hs.h + x0);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[j] = to_acc<float>(a.v[j]);
      if (mirror != nullptr) {  // columns W-1-x0-j, j = 0..kVec-1: one aligned pack, read backwards
        const Pack<T, kVec> b = *reinterpret_cast<const Pack<T, kVec>*>(mirror + y * fs.h + (W - kVec - x0));
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[j] = __fmul_rn(__fadd_rn(v[j], to_acc<float>(b.v[kVec - 1 - j])), 0.5f);
      }
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Peak<index_t> candidate{v[j], y * W + x0 + j};
      if (beats(candidate, best)) best = candidate;
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const Peak<index_t> other{__shfl_down_sync(0xffffffffu, best.value, offset),
                              __shfl_down_sync(0xffffffffu, best.index, offset)};
    if (beats(other, best)) best = other;
  }
  __shared__ Peak<index_t> warp_best[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kWarps; ++w) {
    if (beats(warp_best[w], best)) best = warp_best[w];
  }
  const index_t x = best.index % W, y = best.index / W;
  float fx = static_cast<float>(x), fy = static_cast<float>(y);
  if (x > 0 && x < W - 1 && y > 0 && y < H - 1) {
    fx += quarter_step(value(y, x - 1), value(y, x + 1));
    fy += quarter_step(value(y - 1, x), value(y + 1, x));
  }
  coords[2 * static_cast<int64_t>(m)] = fx;
  coords[2 * static_cast<int64_t>(m) + 1] = fy;
  maxvals[m] = best.value;
}

// Largest element offset a tensor of these sizes and (non-negative) strides reaches, plus one.
int64_t offset_span(const int64_t sizes[4], const int64_t strides[4]) {
  int64_t span = 1;
  for (int d = 0; d < 4; ++d) span += (sizes[d] - 1) * strides[d];
  return span;
}

// Whether kVec-element packs of every row of t are aligned loads.
bool rows_vectorizable(const void* t, const int64_t strides[4], int64_t W, int kVec, size_t elem) {
  const bool aligned = reinterpret_cast<uintptr_t>(t) % (kVec * elem) == 0;
  return aligned && strides[3] == 1 && W % kVec == 0 && strides[0] % kVec == 0 && strides[1] % kVec == 0 &&
         strides[2] % kVec == 0;
}

template <typename T, typename index_t, int kVec>
cudaError_t launch(const void* heatmaps, const int64_t hs[4], const void* flipped, const int64_t fs[4],
                   const FlipPerm& perm, int64_t N, int64_t K, int64_t H, int64_t W, float* coords, float* maxvals,
                   cudaStream_t stream) {
  const Strides4<index_t> h{static_cast<index_t>(hs[0]), static_cast<index_t>(hs[1]), static_cast<index_t>(hs[2]),
                            static_cast<index_t>(hs[3])};
  const Strides4<index_t> f = flipped == nullptr
                                  ? h
                                  : Strides4<index_t>{static_cast<index_t>(fs[0]), static_cast<index_t>(fs[1]),
                                                      static_cast<index_t>(fs[2]), static_cast<index_t>(fs[3])};
  decode_heatmaps_kernel<T, index_t, kVec><<<static_cast<unsigned>(N * K), kThreads, 0, stream>>>(
      static_cast<const T*>(heatmaps), h, static_cast<const T*>(flipped), f, perm, static_cast<index_t>(K),
      static_cast<index_t>(H), static_cast<index_t>(W), coords, maxvals);
  return cudaGetLastError();
}

template <typename T, typename index_t>
cudaError_t launch_vec(const void* heatmaps, const int64_t hs[4], const void* flipped, const int64_t fs[4],
                       const FlipPerm& perm, int64_t N, int64_t K, int64_t H, int64_t W, float* coords,
                       float* maxvals, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);  // 16-byte loads
  const bool vec = kVec > 1 && rows_vectorizable(heatmaps, hs, W, kVec, sizeof(T)) &&
                   (flipped == nullptr || rows_vectorizable(flipped, fs, W, kVec, sizeof(T)));
  if constexpr (kVec > 1) {
    if (vec) return launch<T, index_t, kVec>(heatmaps, hs, flipped, fs, perm, N, K, H, W, coords, maxvals, stream);
  }
  return launch<T, index_t, 1>(heatmaps, hs, flipped, fs, perm, N, K, H, W, coords, maxvals, stream);
}

}  // namespace
}  // namespace shg_fast::cuda

extern "C" cudaError_t shg_decode_heatmaps(const void* heatmaps, const int64_t heatmap_strides[4],
                                           const void* flipped, const int64_t flipped_strides[4],
                                           const int64_t* flip_perm, int64_t N, int64_t K, int64_t H, int64_t W,
                                           shg_dtype dtype, float* coords, float* maxvals, cudaStream_t stream) {
  using namespace shg_fast::cuda;
  if (N < 0 || K < 0 || H <= 0 || W <= 0) return cudaErrorInvalidValue;
  if (N * K == 0) return cudaSuccess;
  if (N * K > kInt32Max) return cudaErrorInvalidValue;  // one block per map: grid.x limit
  if (flipped != nullptr && K > kMaxFlipJoints) return cudaErrorInvalidValue;
  const int64_t sizes[4] = {N, K, H, W};
  for (int d = 0; d < 4; ++d) {
    if (heatmap_strides[d] < 0 || (flipped != nullptr && flipped_strides[d] < 0)) return cudaErrorInvalidValue;
  }
  FlipPerm perm{};
  if (flipped != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t j = flip_perm == nullptr ? k : flip_perm[k];
      if (j < 0 || j >= K) return cudaErrorInvalidValue;
      perm.joint[k] = static_cast<int32_t>(j);
    }
  }
  int64_t span = offset_span(sizes, heatmap_strides);
  if (flipped != nullptr) {
    const int64_t flipped_span = offset_span(sizes, flipped_strides);
    span = flipped_span > span ? flipped_span : span;
  }
  // The scan's index reaches H * W + kThreads - 1 (the loop's last step): keep it in int32 too.
  const bool small = span <= kInt32Max && H * W + kThreads <= kInt32Max;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return small ? launch_vec<T, int32_t>(heatmaps, heatmap_strides, flipped, flipped_strides, perm, N, K, H, W,
                                          coords, maxvals, stream)
                 : launch_vec<T, int64_t>(heatmaps, heatmap_strides, flipped, flipped_strides, perm, N, K, H, W,
                                          coords, maxvals, stream);
  });
}
