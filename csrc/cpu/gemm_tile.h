// The register-blocked float32 GEMM micro-tile shared by the CPU convolutions (conv1x1.cpp, winograd.cpp).
#pragma once
#include <cstdint>

namespace shg_fast::cpu {

constexpr int64_t kTileRows = 6;   // rows (pixels or Winograd tiles) per micro-tile
constexpr int64_t kTileCols = 16;  // output columns per micro-tile: two AVX2 vectors

// What is done to a micro-tile's sums before they are stored: + bias[col] (nullptr: none),
// + add[row * ld_add + col] (nullptr: none), + add_rows[row][col] (nullptr: none; one pointer per
// stored row, e.g. a nearest-upsampled map's rows), then ReLU (NaN kept).
struct TileEpilogue {
  const float* bias;
  const float* add;
  int64_t ld_add;
  const float* const* add_rows;
  bool relu;
};

// y[i * ldy + j] = epilogue(sum_k a[i * lda + k] * b[k * ldb + j]) for rows i < rows and columns j < cols,
// summing k = 0 .. depth - 1 in order (one FMA chain per output). Rows past `rows` are computed on row 0
// and not stored; b must hold kTileCols readable floats per row whatever cols is (pad it).
// bias and add are offset to the tile's first column (and add to its first row).
void gemm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float* y, int64_t ldy,
               int64_t rows, int64_t cols, const TileEpilogue& epilogue);

}  // namespace shg_fast::cpu
