// CUDA kernel: the eval-mode pre-activation residual block (shg_fast.fusion.FoldedResidual) in
// one launch. Each thread block owns a kTileH x kTileW tile of output pixels of one image and a
// chunk of output channels:
//
//   A  a1 = relu(x * in_scale + in_shift)       tile + 1-pixel halo, all Cin      -> shared
//   B  h1 = relu(a1 . w1 + b1)                  tile + halo, all Cmid; 0 outside  -> shared
//                                                the image (conv3x3 zero padding)
//   C  h2 = relu(conv3x3(h1) + b2)               tile, all Cmid                    -> shared (over a1)
//   D  out = h2 . w3 + b3 + skip + up            tile, the block's output channels -> global
//        skip = x (identity) or x . ws + bs (projection, on the raw input);
//        up   = upsample[n, y / 2, x / 2]        (optional nearest-2x add)
//
// Stages B, C and D are GEMMs with fp32 accumulation (fp64 for double). For fp16/bf16 with
// every channel count a multiple of 16 they run on tensor cores (WMMA 16x16x16); otherwise a
// plain loop computes each output element (the path for fp32, fp64 and odd channel counts).
// A block recomputes stages A-C for its tile; splitting output channels across blocks trades
// that recomputation for enough blocks to fill the GPU on small maps at batch 1.
#include <mma.h>

#include "common.cuh"

namespace shg_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileH = 4;   // output rows per block
constexpr int kTileW = 16;  // output columns per block: one WMMA M-tile is one output row
constexpr int kHaloH = kTileH + 2;
constexpr int kHaloW = kTileW + 2;
constexpr int kHaloPixels = kHaloH * kHaloW;                // 108
constexpr int kHaloRows = (kHaloPixels + 15) / 16 * 16;     // 112: rows of a1/h1, padded for WMMA
constexpr int kTilePixels = kTileH * kTileW;                // 64
constexpr int kMaxChunks = 4;  // at most 4x recomputation of stages A-C
constexpr int kWmma = 16;

static_assert(kTileW == kWmma, "stage C maps one WMMA M-tile onto one output row");
static_assert(kTilePixels % kWmma == 0, "stage D tiles the output pixels by 16");

// Byte offsets of the shared-memory regions of one block (each 128-byte aligned).
struct SmemLayout {
  size_t a1_h2;  // a1 (kHaloRows x Cin), later h2 (kTilePixels x Cmid)
  size_t h1;     // kHaloRows x Cmid
  size_t xs;     // raw x of the tile (kTilePixels x Cin): tensor-core projection only
  size_t stage;  // per-warp 16x16 float accumulator staging: tensor-core path only
  size_t total;
};

__host__ __device__ inline size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

__host__ __device__ inline SmemLayout smem_layout(int64_t Cin, int64_t Cmid, size_t elem, bool tensor_cores,
                                                  bool projection) {
  const size_t a1 = static_cast<size_t>(kHaloRows) * Cin, h2 = static_cast<size_t>(kTilePixels) * Cmid;
  SmemLayout s;
  s.a1_h2 = 0;
  s.h1 = align128((a1 > h2 ? a1 : h2) * elem);
  s.xs = s.h1 + align128(static_cast<size_t>(kHaloRows) * Cmid * elem);
  s.stage = s.xs + (tensor_cores && projection ? align128(static_cast<size_t>(kTilePixels) * Cin * elem) : 0);
  s.total = s.stage + (tensor_cores ? static_cast<size_t>(kWarps) * kWmma * kWmma * sizeof(float) : 0);
  return s;
}

// The kernel's view of shg_residual_block_args, typed.
template <typename T>
struct Params {
  const T* __restrict__ x;
  const T* __restrict__ in_scale;
  const T* __restrict__ in_shift;
  const T* __restrict__ w1;
  const T* __restrict__ b1;
  const T* __restrict__ w2;
  const T* __restrict__ b2;
  const T* __restrict__ w3;
  const T* __restrict__ b3;
  const T* __restrict__ ws;
  const T* __restrict__ bs;
  const T* __restrict__ upsample;
  T* __restrict__ out;
  int H, W, Cin, Cmid, Cout;  // each < 2^31 (checked by the launcher)
  int tiles_w;                // ceil(W / kTileW)
  int tiles_per_image;        // ceil(H / kTileH) * tiles_w
  int chunk;                  // output channels per block (blockIdx.y selects the chunk)
};

// out[n, gy, gx, co] = acc (h2 . w3 + b3 and, for the projection, x . ws + bs) + identity skip
// + upsample. acc already holds the GEMM sums; this adds the rest and stores.
template <typename T, typename Acc, typename index_t>
__device__ __forceinline__ void store_output(const Params<T>& p, index_t n, int gy, int gx, int co, Acc acc) {
  const index_t pixel = (n * p.H + gy) * p.W + gx;
  acc += to_acc<Acc>(p.b3[co]);
  if (p.ws != nullptr) {
    acc += to_acc<Acc>(p.bs[co]);
  } else {
    acc += to_acc<Acc>(p.x[pixel * p.Cin + co]);
  }
  if (p.upsample != nullptr) {
    const index_t Hl = (p.H + 1) / 2, Wl = (p.W + 1) / 2;
    acc += to_acc<Acc>(p.upsample[((n * Hl + gy / 2) * Wl + gx / 2) * p.Cout + co]);
  }
  p.out[pixel * p.Cout + co] = from_acc<T, Acc>(acc);
}

// acc += A (16 x K, row-major, leading dimension lda) . B (K x 16), where B(k, j) = Bt[j * ldb + k]
// (a weight matrix stored output-major). Pointers 32-byte aligned; K, lda, ldb multiples of 16.
template <typename T>
__device__ __forceinline__ void wmma_accumulate(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>& acc,
                                                const T* A, int lda, const T* Bt, int ldb, int K) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
  for (int k0 = 0; k0 < K; k0 += kWmma) {
    wmma::load_matrix_sync(a, A + k0, lda);
    wmma::load_matrix_sync(b, Bt + k0, ldb);
    wmma::mma_sync(acc, a, b, acc);
  }
}

// Hand the warp's 16x16 accumulator to epilogue(row, col, value), element by element.
template <typename Epilogue>
__device__ __forceinline__ void wmma_epilogue(const nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>& acc,
                                              float* stage, Epilogue epilogue) {
  using namespace nvcuda;
  wmma::store_matrix_sync(stage, acc, kWmma, wmma::mem_row_major);
  __syncwarp();
  for (int i = threadIdx.x % 32; i < kWmma * kWmma; i += 32) epilogue(i / kWmma, i % kWmma, stage[i]);
  __syncwarp();  // the next store_matrix_sync overwrites stage
}

template <typename T, typename index_t, bool kTensorCores>
__global__ void __launch_bounds__(kThreads) residual_block_kernel(
    Params<T> p) {  // pointers (as shg_residual_block_args in launchers.h), sizes, tiling and channel chunk
  using Acc = acc_t<T>;
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemLayout layout = smem_layout(p.Cin, p.Cmid, sizeof(T), kTensorCores, p.ws != nullptr);
  T* a1 = reinterpret_cast<T*>(smem + layout.a1_h2);  // stage A output, dead after stage B
  T* h2 = a1;                                          // stage C output
  T* h1 = reinterpret_cast<T*>(smem + layout.h1);
  T* xs = reinterpret_cast<T*>(smem + layout.xs);
  float* stage = reinterpret_cast<float*>(smem + layout.stage) + (threadIdx.x / 32) * kWmma * kWmma;

  const int Cin = p.Cin, Cmid = p.Cmid;
  const index_t n = blockIdx.x / p.tiles_per_image;
  const int tile = blockIdx.x % p.tiles_per_image;
  const int y0 = tile / p.tiles_w * kTileH, x0 = tile % p.tiles_w * kTileW;  // first output pixel
  const int co_begin = blockIdx.y * p.chunk;
  const int co_count = min(p.chunk, p.Cout - co_begin);
  // Image position of halo pixel h (row-major in the (kTileH+2) x (kTileW+2) halo) and whether it is inside.
  auto halo_y = [&](int h) { return y0 - 1 + h / kHaloW; };
  auto halo_x = [&](int h) { return x0 - 1 + h % kHaloW; };
  auto inside = [&](int gy, int gx) { return gy >= 0 && gy < p.H && gx >= 0 && gx < p.W; };

  // Stage A: a1 = relu(x * in_scale + in_shift) on the halo; zero outside the image and in the padding rows.
  for (int e = threadIdx.x; e < kHaloRows * Cin; e += kThreads) {
    const int h = e / Cin, c = e % Cin;
    const int gy = halo_y(h), gx = halo_x(h);
    Acc v = Acc(0);
    if (h < kHaloPixels && inside(gy, gx)) {
      const Acc raw = to_acc<Acc>(p.x[((n * p.H + gy) * p.W + gx) * Cin + c]);
      v = relu(raw * to_acc<Acc>(p.in_scale[c]) + to_acc<Acc>(p.in_shift[c]));
    }
    a1[e] = from_acc<T, Acc>(v);
  }
  if constexpr (kTensorCores) {
    if (p.ws != nullptr) {  // raw x of the tile for the projection GEMM of stage D
      for (int e = threadIdx.x; e < kTilePixels * Cin; e += kThreads) {
        const int t = e / Cin, c = e % Cin;
        const int gy = y0 + t / kTileW, gx = x0 + t % kTileW;
        xs[e] = inside(gy, gx) ? p.x[((n * p.H + gy) * p.W + gx) * Cin + c] : from_acc<T, Acc>(Acc(0));
      }
    }
  }
  __syncthreads();

  // Stage B: h1 = relu(a1 . w1 + b1) on the halo pixels; 0 outside the image (zero padding of conv3x3).
  auto h1_epilogue = [&](int h, int j, Acc acc) {
    const bool keep = inside(halo_y(h), halo_x(h));
    h1[h * Cmid + j] = from_acc<T, Acc>(keep ? relu(acc + to_acc<Acc>(p.b1[j])) : Acc(0));
  };
  if constexpr (kTensorCores) {
    const int tiles_n = Cmid / kWmma;
    for (int t = threadIdx.x / 32; t < (kHaloRows / kWmma) * tiles_n; t += kWarps) {
      const int mt = t / tiles_n, nt = t % tiles_n;
      nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
      nvcuda::wmma::fill_fragment(acc, 0.0f);
      wmma_accumulate(acc, a1 + mt * kWmma * Cin, Cin, p.w1 + nt * kWmma * Cin, Cin, Cin);
      wmma_epilogue(acc, stage, [&](int r, int c, float v) {
        const int h = mt * kWmma + r;
        if (h < kHaloPixels) h1_epilogue(h, nt * kWmma + c, v);
      });
    }
  } else {
    for (int e = threadIdx.x; e < kHaloPixels * Cmid; e += kThreads) {
      const int h = e / Cmid, j = e % Cmid;
      const T* a = a1 + h * Cin;
      const T* w = p.w1 + static_cast<index_t>(j) * Cin;
      Acc acc = Acc(0);
      for (int c = 0; c < Cin; ++c) acc += to_acc<Acc>(a[c]) * to_acc<Acc>(w[c]);
      h1_epilogue(h, j, acc);
    }
  }
  __syncthreads();

  // Stage C: h2 = relu(conv3x3(h1) + b2) on the tile; output pixel (ty, tx) reads halo pixels
  // (ty + dy, tx + dx), dy, dx in 0..2. h2 overwrites a1, whose last reader was stage B.
  if constexpr (kTensorCores) {
    const int tiles_n = Cmid / kWmma;
    for (int t = threadIdx.x / 32; t < kTileH * tiles_n; t += kWarps) {
      const int ty = t / tiles_n, nt = t % tiles_n;  // one output row of 16 pixels, 16 channels
      nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
      nvcuda::wmma::fill_fragment(acc, 0.0f);
      for (int tap = 0; tap < 9; ++tap) {
        const int dy = tap / 3, dx = tap % 3;
        const T* a = h1 + ((ty + dy) * kHaloW + dx) * Cmid;  // 16 consecutive halo pixels of row ty + dy
        const T* w = p.w2 + (static_cast<index_t>(tap) * Cmid + nt * kWmma) * Cmid;
        wmma_accumulate(acc, a, Cmid, w, Cmid, Cmid);
      }
      wmma_epilogue(acc, stage, [&](int r, int c, float v) {
        const int j = nt * kWmma + c;
        h2[(ty * kTileW + r) * Cmid + j] = from_acc<T, Acc>(relu(v + to_acc<Acc>(p.b2[j])));
      });
    }
  } else {
    for (int e = threadIdx.x; e < kTilePixels * Cmid; e += kThreads) {
      const int t = e / Cmid, j = e % Cmid;
      const int ty = t / kTileW, tx = t % kTileW;
      Acc acc = Acc(0);
      for (int tap = 0; tap < 9; ++tap) {
        const T* a = h1 + ((ty + tap / 3) * kHaloW + tx + tap % 3) * Cmid;
        const T* w = p.w2 + (static_cast<index_t>(tap) * Cmid + j) * Cmid;
        for (int c = 0; c < Cmid; ++c) acc += to_acc<Acc>(a[c]) * to_acc<Acc>(w[c]);
      }
      h2[e] = from_acc<T, Acc>(relu(acc + to_acc<Acc>(p.b2[j])));
    }
  }
  __syncthreads();

  // Stage D: out = h2 . w3 (+ x . ws) + biases + identity skip + upsample, this block's channels.
  if constexpr (kTensorCores) {
    const int tiles_n = co_count / kWmma;
    for (int t = threadIdx.x / 32; t < (kTilePixels / kWmma) * tiles_n; t += kWarps) {
      const int mt = t / tiles_n, nt = t % tiles_n;
      const int co0 = co_begin + nt * kWmma;
      nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
      nvcuda::wmma::fill_fragment(acc, 0.0f);
      wmma_accumulate(acc, h2 + mt * kWmma * Cmid, Cmid, p.w3 + static_cast<index_t>(co0) * Cmid, Cmid, Cmid);
      if (p.ws != nullptr) {
        wmma_accumulate(acc, xs + mt * kWmma * Cin, Cin, p.ws + static_cast<index_t>(co0) * Cin, Cin, Cin);
      }
      wmma_epilogue(acc, stage, [&](int r, int c, float v) {
        const int t_pixel = mt * kWmma + r;
        const int gy = y0 + t_pixel / kTileW, gx = x0 + t_pixel % kTileW;
        if (inside(gy, gx)) store_output<T, Acc, index_t>(p, n, gy, gx, co0 + c, v);
      });
    }
  } else {
    for (int e = threadIdx.x; e < kTilePixels * co_count; e += kThreads) {
      const int t = e / co_count, co = co_begin + e % co_count;
      const int gy = y0 + t / kTileW, gx = x0 + t % kTileW;
      if (!inside(gy, gx)) continue;
      const T* a = h2 + t * Cmid;
      const T* w = p.w3 + static_cast<index_t>(co) * Cmid;
      Acc acc = Acc(0);
      for (int c = 0; c < Cmid; ++c) acc += to_acc<Acc>(a[c]) * to_acc<Acc>(w[c]);
      if (p.ws != nullptr) {
        const T* xr = p.x + ((n * p.H + gy) * p.W + gx) * Cin;
        const T* wr = p.ws + static_cast<index_t>(co) * Cin;
        for (int c = 0; c < Cin; ++c) acc += to_acc<Acc>(xr[c]) * to_acc<Acc>(wr[c]);
      }
      store_output<T, Acc, index_t>(p, n, gy, gx, co, acc);
    }
  }
}

bool is_16bit(shg_dtype dtype) { return dtype == SHG_FLOAT16 || dtype == SHG_BFLOAT16; }

bool aligned32(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 32 == 0; }

// Tensor cores need 16-bit data, channel counts that are multiples of 16 and 32-byte aligned weights.
bool use_tensor_cores(const shg_residual_block_args& a, shg_dtype dtype) {
  return is_16bit(dtype) && a.Cin % kWmma == 0 && a.Cmid % kWmma == 0 && a.Cout % kWmma == 0 && aligned32(a.w1) &&
         aligned32(a.w2) && aligned32(a.w3) && (a.ws == nullptr || aligned32(a.ws));
}

size_t element_size(shg_dtype dtype) {
  return dtype == SHG_FLOAT64 ? 8 : (dtype == SHG_FLOAT32 ? 4 : 2);
}

template <typename T, typename index_t, bool kTensorCores>
cudaError_t launch(const Params<T>& p, dim3 grid, size_t smem, cudaStream_t stream) {
  auto kernel = residual_block_kernel<T, index_t, kTensorCores>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const shg_residual_block_args& a, shg_dtype dtype, cudaStream_t stream) {
  const int64_t tiles_w = (a.W + kTileW - 1) / kTileW;
  const int64_t tiles_per_image = (a.H + kTileH - 1) / kTileH * tiles_w;
  const int64_t blocks_x = a.N * tiles_per_image;  // grid.x: one block per tile of every image
  if (blocks_x > kInt32Max) return cudaErrorInvalidValue;

  // Split the output channels (in multiples of 16) until the grid covers the GPU's SMs, at most kMaxChunks ways.
  int device = 0, sms = 1;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t chunk_units = (a.Cout + kWmma - 1) / kWmma;
  int64_t chunks = (sms + blocks_x - 1) / blocks_x;
  chunks = chunks < 1 ? 1 : (chunks > kMaxChunks ? kMaxChunks : chunks);
  chunks = chunks > chunk_units ? chunk_units : chunks;
  const int chunk = static_cast<int>((chunk_units + chunks - 1) / chunks) * kWmma;
  const unsigned grid_y = static_cast<unsigned>((a.Cout + chunk - 1) / chunk);

  Params<T> p{static_cast<const T*>(a.x),  static_cast<const T*>(a.in_scale), static_cast<const T*>(a.in_shift),
              static_cast<const T*>(a.w1), static_cast<const T*>(a.b1),       static_cast<const T*>(a.w2),
              static_cast<const T*>(a.b2), static_cast<const T*>(a.w3),       static_cast<const T*>(a.b3),
              static_cast<const T*>(a.ws), static_cast<const T*>(a.bs),       static_cast<const T*>(a.upsample),
              static_cast<T*>(a.out),      static_cast<int>(a.H),             static_cast<int>(a.W),
              static_cast<int>(a.Cin),     static_cast<int>(a.Cmid),          static_cast<int>(a.Cout),
              static_cast<int>(tiles_w),   static_cast<int>(tiles_per_image), chunk};
  const dim3 grid(static_cast<unsigned>(blocks_x), grid_y);
  const size_t smem = shg_residual_block_smem_bytes(&a, dtype);
  const int64_t x_elems = a.N * a.H * a.W * (a.Cin > a.Cout ? a.Cin : a.Cout);
  const bool small = x_elems <= kInt32Max;
  if constexpr (sizeof(T) == 2) {
    if (use_tensor_cores(a, dtype)) {
      return small ? launch<T, int32_t, true>(p, grid, smem, stream)
                   : launch<T, int64_t, true>(p, grid, smem, stream);
    }
  }
  return small ? launch<T, int32_t, false>(p, grid, smem, stream)
               : launch<T, int64_t, false>(p, grid, smem, stream);
}

}  // namespace
}  // namespace shg_fast::cuda

extern "C" size_t shg_residual_block_smem_bytes(const shg_residual_block_args* args, shg_dtype dtype) {
  using namespace shg_fast::cuda;
  return smem_layout(args->Cin, args->Cmid, element_size(dtype), use_tensor_cores(*args, dtype), args->ws != nullptr)
      .total;
}

extern "C" cudaError_t shg_residual_block(const shg_residual_block_args* args, shg_dtype dtype,
                                          cudaStream_t stream) {
  using namespace shg_fast::cuda;
  const shg_residual_block_args& a = *args;
  const bool sizes_ok = a.N >= 0 && a.H >= 0 && a.W >= 0 && a.Cin > 0 && a.Cmid > 0 && a.Cout > 0 &&
                        a.H <= kInt32Max && a.W <= kInt32Max && a.Cin <= kInt32Max && a.Cout <= kInt32Max;
  if (!sizes_ok || (a.ws == nullptr) != (a.bs == nullptr) || (a.ws == nullptr && a.Cin != a.Cout)) {
    return cudaErrorInvalidValue;
  }
  if (a.N * a.H * a.W == 0) return cudaSuccess;
  int device = 0, smem_limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (shg_residual_block_smem_bytes(args, dtype) > static_cast<size_t>(smem_limit)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) { return launch_typed<decltype(tag)>(a, dtype, stream); });
}
