// The float32 GEMM micro-tile (see gemm_tile.h): kTileRows x kTileCols sums held in 12 AVX2 registers.
// Per step of the shared dimension it loads one row of b (two vectors) and broadcasts one value of a
// per row: 12 FMAs for 8 loads, so the two FMA pipes of a core stay busy from L1/L2. Compiled for
// AVX2+FMA (picked at run time when the CPU has them) and as portable C++ for the baseline.
#include "gemm_tile.h"

#include "cpu_common.h"

#if SHG_CPU_AVX2
#include <immintrin.h>
#endif

namespace shg_fast::cpu {
namespace {

void gemm_tile_baseline(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float* y,
                        int64_t ldy, int64_t rows, int64_t cols, const TileEpilogue& e) {
  float acc[kTileRows][kTileCols] = {};
  for (int64_t k = 0; k < depth; ++k) {
    for (int64_t i = 0; i < kTileRows; ++i) {
      const float av = a[(i < rows ? i : 0) * lda + k];
      for (int64_t j = 0; j < kTileCols; ++j) {
        acc[i][j] += av * b[k * ldb + j];
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      float v = acc[i][j] + (e.bias != nullptr ? e.bias[j] : 0.0f);
      v += e.add != nullptr ? e.add[i * e.ld_add + j] : 0.0f;
      v += e.add_rows != nullptr ? e.add_rows[i][j] : 0.0f;
      y[i * ldy + j] = e.relu && v < 0.0f ? 0.0f : v;
    }
  }
}

#if SHG_CPU_AVX2
// v += the 16 floats at add (the lanes in mask0/mask1 unless full).
SHG_TARGET_AVX2 SHG_ALWAYS_INLINE void add_row(__m256& v0, __m256& v1, const float* add, __m256i mask0, __m256i mask1,
                                               bool full) {
  v0 = _mm256_add_ps(v0, full ? _mm256_loadu_ps(add) : _mm256_maskload_ps(add, mask0));
  v1 = _mm256_add_ps(v1, full ? _mm256_loadu_ps(add + 8) : _mm256_maskload_ps(add + 8, mask1));
}

// One micro-tile row: v + bias (+ add rows), ReLU if asked, stored to y's row; `full` rows store all 16
// lanes, others the lanes in mask0/mask1.
SHG_TARGET_AVX2 SHG_ALWAYS_INLINE void store_row(__m256 v0, __m256 v1, __m256 bias0, __m256 bias1, __m256i mask0,
                                                 __m256i mask1, const float* add, const float* add2, float* y,
                                                 bool full, bool relu) {
  v0 = _mm256_add_ps(v0, bias0);
  v1 = _mm256_add_ps(v1, bias1);
  if (add != nullptr) {
    add_row(v0, v1, add, mask0, mask1, full);
  }
  if (add2 != nullptr) {
    add_row(v0, v1, add2, mask0, mask1, full);
  }
  if (relu) {  // max(0, v) returns v when v is NaN
    v0 = _mm256_max_ps(_mm256_setzero_ps(), v0);
    v1 = _mm256_max_ps(_mm256_setzero_ps(), v1);
  }
  if (full) {
    _mm256_storeu_ps(y, v0);
    _mm256_storeu_ps(y + 8, v1);
  } else {
    _mm256_maskstore_ps(y, mask0, v0);
    _mm256_maskstore_ps(y + 8, mask1, v1);
  }
}

// One row of the micro-tile, one step of the sum: (lo, hi) += *a * (b0, b1).
SHG_TARGET_AVX2 SHG_ALWAYS_INLINE void fma_row(const float* a, __m256 b0, __m256 b1, __m256& lo, __m256& hi) {
  const __m256 av = _mm256_broadcast_ss(a);
  lo = _mm256_fmadd_ps(av, b0, lo);
  hi = _mm256_fmadd_ps(av, b1, hi);
}

SHG_TARGET_AVX2 void gemm_tile_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth,
                                    float* y, int64_t ldy, int64_t rows, int64_t cols, const TileEpilogue& e) {
  // Named accumulators: GCC keeps an accumulator array in memory across the loop (a store per FMA).
  const float *a0 = a, *a1 = a + (rows > 1 ? lda : 0), *a2 = a + (rows > 2 ? 2 * lda : 0);
  const float *a3 = a + (rows > 3 ? 3 * lda : 0), *a4 = a + (rows > 4 ? 4 * lda : 0);
  const float* a5 = a + (rows > 5 ? 5 * lda : 0);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < depth; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
    fma_row(a0 + k, b0, b1, c00, c01);
    fma_row(a1 + k, b0, b1, c10, c11);
    fma_row(a2 + k, b0, b1, c20, c21);
    fma_row(a3 + k, b0, b1, c30, c31);
    fma_row(a4 + k, b0, b1, c40, c41);
    fma_row(a5 + k, b0, b1, c50, c51);
  }
  const __m256 acc[kTileRows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  const __m256 bias0 = e.bias != nullptr ? _mm256_loadu_ps(e.bias) : _mm256_setzero_ps();
  const __m256 bias1 = e.bias != nullptr ? _mm256_loadu_ps(e.bias + 8) : _mm256_setzero_ps();
  // lanes [0, cols) of the tile's two vectors
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), n = _mm256_set1_epi32(static_cast<int>(cols));
  const __m256i mask0 = _mm256_cmpgt_epi32(n, lane);
  const __m256i mask1 = _mm256_cmpgt_epi32(n, _mm256_add_epi32(lane, _mm256_set1_epi32(8)));
  for (int64_t i = 0; i < kTileRows; ++i) {
    if (i < rows) {
      store_row(acc[i][0], acc[i][1], bias0, bias1, mask0, mask1, e.add != nullptr ? e.add + i * e.ld_add : nullptr,
                e.add_rows != nullptr ? e.add_rows[i] : nullptr, y + i * ldy, cols == kTileCols, e.relu);
    }
  }
}
#endif

}  // namespace

void gemm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float* y, int64_t ldy,
               int64_t rows, int64_t cols, const TileEpilogue& epilogue) {
#if SHG_CPU_AVX2
  if (use_avx2_fma()) {
    gemm_tile_avx2(a, lda, b, ldb, depth, y, ldy, rows, cols, epilogue);
    return;
  }
#endif
  gemm_tile_baseline(a, lda, b, ldb, depth, y, ldy, rows, cols, epilogue);
}

}  // namespace shg_fast::cpu
