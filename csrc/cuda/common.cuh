// Device helpers shared by the kernels in csrc/cuda: element types, their accumulation types,
// conversions, and the dispatch from the shg_dtype tag to a C++ type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "launchers.h"

namespace shg_fast::cuda {

// Accumulation type of an element type: float for the 16-bit types and float, double for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename Acc>
__device__ __forceinline__ Acc to_acc(float v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(double v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(__half v) { return static_cast<Acc>(__half2float(v)); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(__nv_bfloat16 v) { return static_cast<Acc>(__bfloat162float(v)); }

// Round an accumulator to the element type T (round to nearest even).
template <typename T>
struct FromAcc;
template <>
struct FromAcc<float> {
  __device__ __forceinline__ static float cast(float v) { return v; }
};
template <>
struct FromAcc<double> {
  __device__ __forceinline__ static double cast(double v) { return v; }
};
template <>
struct FromAcc<__half> {
  __device__ __forceinline__ static __half cast(float v) { return __float2half_rn(v); }
};
template <>
struct FromAcc<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 cast(float v) { return __float2bfloat16_rn(v); }
};
template <typename T, typename Acc>
__device__ __forceinline__ T from_acc(Acc v) { return FromAcc<T>::cast(v); }

// ReLU that keeps NaN (as torch.relu does): NaN < 0 is false.
template <typename Acc>
__device__ __forceinline__ Acc relu(Acc v) { return v < Acc(0) ? Acc(0) : v; }

// Call f(T{}) with T the C++ type of dtype; cudaErrorInvalidValue for an unknown tag.
template <typename F>
cudaError_t dispatch_dtype(shg_dtype dtype, F&& f) {
  switch (dtype) {
    case SHG_FLOAT32: return f(float{});
    case SHG_FLOAT64: return f(double{});
    case SHG_FLOAT16: return f(__half{});
    case SHG_BFLOAT16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Blocks for a grid-stride loop over `count` items, capped at what the hardware schedules usefully.
inline unsigned grid_for(int64_t count, int threads) {
  const int64_t blocks = (count + threads - 1) / threads;
  constexpr int64_t kMaxBlocks = 65535;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

constexpr int64_t kInt32Max = 2147483647;
constexpr int kMaxFlipJoints = SHG_MAX_FLIP_JOINTS;

}  // namespace shg_fast::cuda
