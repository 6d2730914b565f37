// CPU 3x3 convolution (stride 1, padding 1) by Winograd F(4x4, 3x3) over NHWC activations.
//
// Each 4x4 output tile comes from a 6x6 input tile: V = B^T d B per input channel, then for each of
// the 36 tile positions one GEMM M[p] = V[p] (tiles x C_in) @ U[p] (C_in x C_out) (at::bmm), then
// Y = A^T M A plus bias (and ReLU). The GEMMs do 36 / (16 * 9) = 1/4 of the direct convolution's
// multiplications. V and M are tile-major ([tile][position][channel]), so each tile's transform
// reads or writes one contiguous block; the GEMMs read them with a row stride of 36 C.
//
// The interpolation points are 0, -1, 1, 1/2, -2 and infinity: with 1/2 in place of the usual 2,
// float32 error is 1.4-2.7x the direct convolution's (measured; the usual 0, +-1, +-2 give ~6x). B^T and A^T entries are dyadic, hence exact in any float type; G's thirds and fifteenths
// are applied in float64 when the weights are transformed. The transforms are compiled twice, for
// AVX2+FMA (picked at run time when the CPU has them) and for the baseline instruction set.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "../checks.h"
#include "cpu_common.h"
#include "gemm_tile.h"
#include "kernels.h"

namespace shg_fast::cpu {
namespace {

constexpr int64_t kTile = 4;   // output tile side
constexpr int64_t kAlpha = 6;  // input tile side: kTile + 3 - 1
constexpr int64_t kPositions = kAlpha * kAlpha;
constexpr int64_t kLanes = 8;  // channels transformed together (one AVX2 float vector)

// G of F(4x4, 3x3) for the points above (the weight transform U = G w G^T).
constexpr double kG[kAlpha][3] = {
    {1, 0, 0},
    {-1.0 / 3, 1.0 / 3, -1.0 / 3},
    {1.0 / 3, 1.0 / 3, 1.0 / 3},
    {-16.0 / 15, -8.0 / 15, -4.0 / 15},
    {1.0 / 15, -2.0 / 15, 4.0 / 15},
    {0, 0, 1},
};

// Tiles per parallel_for chunk: enough work that tiny maps are not split across threads.
constexpr int64_t kGrainTiles = 16;

// Bytes of transformed tiles (V and M) per pass: larger maps and batches go through in chunks of
// tiles this size, so the scratch stays bounded, cache-resident and reused (see thread_scratch()).
constexpr int64_t kWorkspaceBytes = 16 << 20;

// out = B^T in, column by column of kLanes channels:
// B^T = [[1, -3/2, -2, 3/2, 1, 0], [0, 1, -5/2, 1/2, 1, 0], [0, -1, 1/2, 5/2, 1, 0],
//        [0, -2, -1, 2, 1, 0], [0, 1/2, -1, -1/2, 1, 0], [0, 1, -3/2, -2, 3/2, 1]].
template <typename T>
SHG_ALWAYS_INLINE void input_1d(const T (&in)[kAlpha][kLanes], T (&out)[kAlpha][kLanes]) {
  for (int64_t c = 0; c < kLanes; ++c) {
    const T d0 = in[0][c], d1 = in[1][c], d2 = in[2][c], d3 = in[3][c], d4 = in[4][c], d5 = in[5][c];
    out[0][c] = d0 - T(1.5) * d1 - T(2) * d2 + T(1.5) * d3 + d4;
    out[1][c] = d1 - T(2.5) * d2 + T(0.5) * d3 + d4;
    out[2][c] = -d1 + T(0.5) * d2 + T(2.5) * d3 + d4;
    out[3][c] = T(-2) * d1 - d2 + T(2) * d3 + d4;
    out[4][c] = T(0.5) * d1 - d2 - T(0.5) * d3 + d4;
    out[5][c] = d1 - T(1.5) * d2 - T(2) * d3 + T(1.5) * d4 + d5;
  }
}

// out = A^T in: A^T = [[1, 1, 1, 1, 1, 0], [0, -1, 1, 1/2, -2, 0], [0, 1, 1, 1/4, 4, 0], [0, -1, 1, 1/8, -8, 1]].
template <typename T>
SHG_ALWAYS_INLINE void output_1d(const T (&in)[kAlpha][kLanes], T (&out)[kTile][kLanes]) {
  for (int64_t c = 0; c < kLanes; ++c) {
    const T m0 = in[0][c], m1 = in[1][c], m2 = in[2][c], m3 = in[3][c], m4 = in[4][c], m5 = in[5][c];
    out[0][c] = m0 + m1 + m2 + m3 + m4;
    out[1][c] = -m1 + m2 + T(0.5) * m3 - T(2) * m4;
    out[2][c] = m1 + m2 + T(0.25) * m3 + T(4) * m4;
    out[3][c] = -m1 + m2 + T(0.125) * m3 - T(8) * m4 + m5;
  }
}

// dst[0:kLanes] = src[0:count], zero past count (count == kLanes is the vectorised common case).
template <typename T>
SHG_ALWAYS_INLINE void load_lanes(const T* src, T (&dst)[kLanes], int64_t count) {
  if (count == kLanes) {
    for (int64_t c = 0; c < kLanes; ++c) {
      dst[c] = src[c];
    }
  } else {
    for (int64_t c = 0; c < kLanes; ++c) {
      dst[c] = c < count ? src[c] : T(0);
    }
  }
}

// dst[0:count] = src[0:count].
template <typename T>
SHG_ALWAYS_INLINE void store_lanes(T* dst, const T (&src)[kLanes], int64_t count) {
  if (count == kLanes) {
    for (int64_t c = 0; c < kLanes; ++c) {
      dst[c] = src[c];
    }
  } else {
    for (int64_t c = 0; c < count; ++c) {
      dst[c] = src[c];
    }
  }
}

struct TileGrid {
  int64_t N, H, W;  // activation batch and spatial size (input and output alike)
  int64_t tiles_h, tiles_w;
  int64_t tiles() const { return N * tiles_h * tiles_w; }
};

// v[t - first][p][c] = (B^T d_t B)[p] for tiles t in [begin, end) of x (NHWC, zero outside the map).
template <typename T>
SHG_ALWAYS_INLINE void input_transform_body(const T* x, T* v, const TileGrid& g, int64_t C, int64_t first,
                                            int64_t begin, int64_t end) {
  T col[kAlpha][kLanes], col_t[kAlpha][kLanes], row_t[kAlpha][kLanes];
  T tmp[kAlpha][kAlpha][kLanes];  // tmp[i][j] = (B^T d)[i][j]
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / (g.tiles_h * g.tiles_w), ty = (t / g.tiles_w) % g.tiles_h, tx = t % g.tiles_w;
    const int64_t y0 = ty * kTile - 1, x0 = tx * kTile - 1;  // padding 1
    T* v_tile = v + (t - first) * kPositions * C;
    for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
      const int64_t cn = C - c0 < kLanes ? C - c0 : kLanes;
      for (int64_t j = 0; j < kAlpha; ++j) {
        const int64_t xx = x0 + j;
        for (int64_t i = 0; i < kAlpha; ++i) {
          const int64_t yy = y0 + i;
          const bool inside = yy >= 0 && yy < g.H && xx >= 0 && xx < g.W;
          const T* src = inside ? x + ((n * g.H + yy) * g.W + xx) * C + c0 : nullptr;  // padding reads nothing
          load_lanes(src, col[i], inside ? cn : 0);
        }
        input_1d(col, col_t);
        for (int64_t i = 0; i < kAlpha; ++i) {
          for (int64_t c = 0; c < kLanes; ++c) {
            tmp[i][j][c] = col_t[i][c];
          }
        }
      }
      for (int64_t i = 0; i < kAlpha; ++i) {
        input_1d(tmp[i], row_t);
        for (int64_t j = 0; j < kAlpha; ++j) {
          store_lanes(v_tile + (i * kAlpha + j) * C + c0, row_t[j], cn);
        }
      }
    }
  }
}

// y (NHWC) = A^T m[t - first] A + bias (then ReLU) for tiles t in [begin, end), cropped to the map.
template <typename T>
SHG_ALWAYS_INLINE void output_transform_body(const T* m, const T* bias, T* y, const TileGrid& g, int64_t C, bool relu,
                                             int64_t first, int64_t begin, int64_t end) {
  T col[kAlpha][kLanes], col_t[kTile][kLanes], row_t[kTile][kLanes], b[kLanes];
  T tmp[kTile][kAlpha][kLanes];  // tmp[i][j] = (A^T m)[i][j]
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / (g.tiles_h * g.tiles_w), ty = (t / g.tiles_w) % g.tiles_h, tx = t % g.tiles_w;
    const T* m_tile = m + (t - first) * kPositions * C;
    for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
      const int64_t cn = C - c0 < kLanes ? C - c0 : kLanes;
      for (int64_t c = 0; c < kLanes; ++c) {
        b[c] = bias != nullptr && c < cn ? bias[c0 + c] : T(0);
      }
      for (int64_t j = 0; j < kAlpha; ++j) {
        for (int64_t i = 0; i < kAlpha; ++i) {
          load_lanes(m_tile + (i * kAlpha + j) * C + c0, col[i], cn);
        }
        output_1d(col, col_t);
        for (int64_t i = 0; i < kTile; ++i) {
          for (int64_t c = 0; c < kLanes; ++c) {
            tmp[i][j][c] = col_t[i][c];
          }
        }
      }
      for (int64_t i = 0; i < kTile && ty * kTile + i < g.H; ++i) {
        output_1d(tmp[i], row_t);
        for (int64_t j = 0; j < kTile && tx * kTile + j < g.W; ++j) {
          T* dst = y + ((n * g.H + ty * kTile + i) * g.W + tx * kTile + j) * C + c0;
          T out[kLanes];
          for (int64_t c = 0; c < kLanes; ++c) {
            const T value = row_t[j][c] + b[c];
            out[c] = relu && value < T(0) ? T(0) : value;
          }
          store_lanes(dst, out, cn);
        }
      }
    }
  }
}

template <typename T>
void input_transform_baseline(const T* x, T* v, const TileGrid& g, int64_t C, int64_t first, int64_t begin,
                              int64_t end) {
  input_transform_body(x, v, g, C, first, begin, end);
}

template <typename T>
void output_transform_baseline(const T* m, const T* bias, T* y, const TileGrid& g, int64_t C, bool relu,
                               int64_t first, int64_t begin, int64_t end) {
  output_transform_body(m, bias, y, g, C, relu, first, begin, end);
}

#if SHG_CPU_AVX2
template <typename T>
SHG_TARGET_AVX2 void input_transform_avx2(const T* x, T* v, const TileGrid& g, int64_t C,
                                                               int64_t first, int64_t begin, int64_t end) {
  input_transform_body(x, v, g, C, first, begin, end);
}

template <typename T>
SHG_TARGET_AVX2 void output_transform_avx2(const T* m, const T* bias, T* y, const TileGrid& g,
                                                                int64_t C, bool relu, int64_t first, int64_t begin,
                                                                int64_t end) {
  output_transform_body(m, bias, y, g, C, relu, first, begin, end);
}
#endif

template <typename T>
void input_transform(const T* x, T* v, const TileGrid& g, int64_t C, int64_t first, int64_t last) {
  at::parallel_for(first, last, kGrainTiles, [&](int64_t begin, int64_t end) {
#if SHG_CPU_AVX2
    if (use_avx2_fma()) {
      return input_transform_avx2(x, v, g, C, first, begin, end);
    }
#endif
    input_transform_baseline(x, v, g, C, first, begin, end);
  });
}

template <typename T>
void output_transform(const T* m, const T* bias, T* y, const TileGrid& g, int64_t C, bool relu, int64_t first,
                      int64_t last) {
  at::parallel_for(first, last, kGrainTiles, [&](int64_t begin, int64_t end) {
#if SHG_CPU_AVX2
    if (use_avx2_fma()) {
      return output_transform_avx2(m, bias, y, g, C, relu, first, begin, end);
    }
#endif
    output_transform_baseline(m, bias, y, g, C, relu, first, begin, end);
  });
}

// m[:, p] = v[:, p] @ u[p] for the 36 positions: the positions are split over the threads,
// each running its share as one single-threaded batched GEMM (small per-position GEMMs scale better
// this way than each split over all threads).
void position_gemms(const at::Tensor& v, const at::Tensor& u, const at::Tensor& m) {
  const at::Tensor v_by_position = v.transpose(0, 1);  // (36, tiles, C_in) views of the tile-major buffers
  const at::Tensor m_by_position = m.transpose(0, 1);
  const bool inference = c10::InferenceMode::is_enabled();  // thread-local: carry it to the workers
  at::parallel_for(0, kPositions, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode guard(inference);
    at::Tensor out = m_by_position.slice(0, begin, end);
    at::bmm_out(out, v_by_position.slice(0, begin, end), u.slice(0, begin, end));
  });
}

// The same for float32 with C_out a multiple of kTileCols, on the register-blocked micro-tile instead of
// at::bmm (which adds per-matrix dispatch and repacks u on every call): the positions are split over
// the threads; per position, each group of kTileRows tiles (rows 36 C_in apart in the tile-major v)
// runs over every column panel of u[p] while its rows stay in L1.
void position_gemms_tiled(const float* v, const float* u, float* m, int64_t tiles, int64_t c_in, int64_t c_out) {
  at::parallel_for(0, kPositions, 1, [&](int64_t begin, int64_t end) {
    const TileEpilogue none{nullptr, nullptr, 0, nullptr, false};
    for (int64_t p = begin; p < end; ++p) {
      const float* u_p = u + p * c_in * c_out;
      for (int64_t t = 0; t < tiles; t += kTileRows) {
        const int64_t rows = std::min(kTileRows, tiles - t);
        for (int64_t col = 0; col < c_out; col += kTileCols) {
          gemm_tile(v + (t * kPositions + p) * c_in, kPositions * c_in, u_p + col, c_out, c_in,
                    m + (t * kPositions + p) * c_out + col, kPositions * c_out, rows, kTileCols, none);
        }
      }
    }
  });
}

}  // namespace

std::string winograd_isa() {
#if SHG_CPU_AVX2
  return use_avx2_fma() ? "avx2+fma" : "baseline";
#else
  return "baseline";
#endif
}

at::Tensor winograd_weight(const at::Tensor& weight) {
  const at::Tensor g = at::from_blob(const_cast<double*>(&kG[0][0]), {kAlpha, 3}, at::kDouble);  // read only
  // U[i][j][ci][co] = sum_kl G[i][k] w[co][ci][k][l] G[j][l], in float64.
  const at::Tensor u = at::einsum("ik,ockl,jl->ijco", {g, weight.to(at::kDouble), g});
  return u.reshape({kPositions, weight.size(1), weight.size(0)}).to(weight.scalar_type()).contiguous();
}

void winograd_conv3x3_out(const at::Tensor& x_in, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias_in,
                          bool relu, at::Tensor& y) {
  if (y.numel() == 0) {
    return;
  }
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor u = weight_t.contiguous();
  const int64_t c_in = x.size(1), c_out = u.size(2);
  const TileGrid g{x.size(0), x.size(2), x.size(3), (x.size(2) + kTile - 1) / kTile, (x.size(3) + kTile - 1) / kTile};
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t tile_bytes = kPositions * (c_in + c_out) * static_cast<int64_t>(x.element_size());
  // Equal chunks of at most kWorkspaceBytes (an uneven last chunk would run small, slower GEMMs).
  const int64_t most = std::max<int64_t>(1, kWorkspaceBytes / tile_bytes);
  const int64_t chunks = (g.tiles() + most - 1) / most, chunk = (g.tiles() + chunks - 1) / chunks;
  char* scratch = thread_scratch(Scratch::kWinograd, chunk * tile_bytes);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_conv3x3_cpu", [&] {
    scalar_t* v_data = reinterpret_cast<scalar_t*>(scratch);
    scalar_t* m_data = v_data + chunk * kPositions * c_in;
    for (int64_t first = 0; first < g.tiles(); first += chunk) {
      const int64_t last = std::min(first + chunk, g.tiles());
      const at::Tensor v = at::from_blob(v_data, {last - first, kPositions, c_in}, x.options());
      const at::Tensor m = at::from_blob(m_data, {last - first, kPositions, c_out}, x.options());
      input_transform(x.const_data_ptr<scalar_t>(), v_data, g, c_in, first, last);
      if (std::is_same_v<scalar_t, float> && c_out % kTileCols == 0) {  // the casts are no-ops then
        position_gemms_tiled(reinterpret_cast<const float*>(v_data), u.const_data_ptr<float>(),
                             reinterpret_cast<float*>(m_data), last - first, c_in, c_out);
      } else {
        position_gemms(v, u, m);
      }
      output_transform(m_data, bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                       y.mutable_data_ptr<scalar_t>(), g, c_out, relu, first, last);
    }
  });
}

at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                            bool relu) {
  at::Tensor y = at::empty({x.size(0), weight_t.size(2), x.size(2), x.size(3)},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  winograd_conv3x3_out(x, weight_t, bias, relu, y);
  return prefers_channels_last(x) ? y : y.contiguous();
}

}  // namespace shg_fast::cpu
