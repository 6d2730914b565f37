// CPU 1x1 convolution over NHWC activations: a register-blocked GEMM with the residual block's prologue
// and epilogue fused,
//   y[p][o] = act(sum_k clamp(x[p][k], lo[k], hi[k]) * w[o][k] + b[o] + add[p][o] + low[up(p)][o]),
// act = ReLU or identity. Pixels p are the GEMM's rows (NHWC makes each pixel a contiguous row of
// C_in), so no im2col is needed. The micro-tile (gemm_tile.h) is 6 pixels x 16 output channels. The
// weights are packed once (conv1x1_weight) into panels of 16 output channels, each C_in x 16
// contiguous, so a panel stays in L1 while a block's micro-tiles run over it.
//
// The clamp (the folded BN-ReLU prologue, see shg_fast.plan._clamp_prologue) is applied once per
// pixel block while it is copied to per-thread scratch; without a clamp the GEMM reads x in place.
// low is a map of half the size, nearest-upsampled (the hourglass's up-branch add): up(n, h, w) =
// (n, h / 2, w / 2).
// NaN propagates: clamp and ReLU keep a NaN operand (max/min return it), as torch.clamp and relu do.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "cpu_common.h"
#include "gemm_tile.h"
#include "kernels.h"

#if SHG_CPU_AVX2
#include <immintrin.h>
#endif

namespace shg_fast::cpu {
namespace {

constexpr int64_t kCols = kTileCols;  // output channels per packed weight panel
constexpr int64_t kBlockRows = 96;    // pixels per block: its clamped copy (96 x C_in floats) stays in L2
constexpr int64_t kSerialMacs = 1 << 18;  // below this many multiply-adds a call runs on one thread

// One call's operands (float32, NHWC rows): see the file comment for what is computed.
struct Conv1x1Args {
  const float* x;     // (pixels, c_in)
  const float* w;     // (panels, c_in, kCols) from conv1x1_weight
  const float* bias;  // (panels * kCols), zero past c_out
  const float* lo;    // (c_in) clamp bounds, or nullptr for no clamp (hi likewise)
  const float* hi;
  const float* add;   // (pixels, c_out) added before the activation, or nullptr
  const float* low;   // (n, ceil(h / 2), ceil(w / 2), c_out) added nearest-upsampled, or nullptr
  float* y;           // (pixels, c_out)
  int64_t pixels, c_in, c_out;
  int64_t height, width;  // the map (pixels = n * height * width)
  bool relu;
};

// dst[r][k] = clamp(x[r][k], lo[k], hi[k]) for `rows` rows of c_in; a NaN x stays NaN.
void clamp_rows_baseline(const float* x, const Conv1x1Args& p, float* dst, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < p.c_in; ++k) {
      const float v = x[r * p.c_in + k];
      const float t = v < p.lo[k] ? p.lo[k] : v;
      dst[r * p.c_in + k] = t > p.hi[k] ? p.hi[k] : t;
    }
  }
}

#if SHG_CPU_AVX2
SHG_TARGET_AVX2 void clamp_rows_avx2(const float* x, const Conv1x1Args& p, float* dst, int64_t rows) {
  const int64_t vec_end = p.c_in - p.c_in % 8;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * p.c_in;
    float* out = dst + r * p.c_in;
    for (int64_t k = 0; k < vec_end; k += 8) {  // max(lo, v) and min(hi, t) return a NaN v / t
      const __m256 t = _mm256_max_ps(_mm256_loadu_ps(p.lo + k), _mm256_loadu_ps(src + k));
      _mm256_storeu_ps(out + k, _mm256_min_ps(_mm256_loadu_ps(p.hi + k), t));
    }
    for (int64_t k = vec_end; k < p.c_in; ++k) {
      const float t = src[k] < p.lo[k] ? p.lo[k] : src[k];
      out[k] = t > p.hi[k] ? p.hi[k] : t;
    }
  }
}
#endif

// Pixels [first, first + rows) x packed panels [panel_begin, panel_end).
void run_block(const Conv1x1Args& p, int64_t first, int64_t rows, int64_t panel_begin, int64_t panel_end) {
  const float* a = p.x + first * p.c_in;
  if (p.lo != nullptr) {
    float* clamped = reinterpret_cast<float*>(thread_scratch(Scratch::kConv1x1, rows * p.c_in * 4));
#if SHG_CPU_AVX2
    if (use_avx2_fma()) {
      clamp_rows_avx2(a, p, clamped, rows);
    } else {
      clamp_rows_baseline(a, p, clamped, rows);
    }
#else
    clamp_rows_baseline(a, p, clamped, rows);
#endif
    a = clamped;
  }
  // Where each pixel's row of the half-size map starts (the same for every panel).
  int64_t low_offset[kBlockRows];
  for (int64_t r = 0; p.low != nullptr && r < rows; ++r) {
    const int64_t pixel = first + r, n = pixel / (p.height * p.width);
    const int64_t yy = pixel / p.width % p.height, xx = pixel % p.width;
    low_offset[r] = ((n * ((p.height + 1) / 2) + yy / 2) * ((p.width + 1) / 2) + xx / 2) * p.c_out;
  }
  for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
    const float* b = p.w + panel * p.c_in * kCols;
    const int64_t col = panel * kCols, cols = std::min(kCols, p.c_out - col);
    for (int64_t i = 0; i < rows; i += kTileRows) {
      const float* low_rows[kTileRows] = {};
      for (int64_t r = 0; p.low != nullptr && r < kTileRows && i + r < rows; ++r) {
        low_rows[r] = p.low + low_offset[i + r] + col;
      }
      const TileEpilogue epilogue{p.bias + col, p.add != nullptr ? p.add + (first + i) * p.c_out + col : nullptr,
                                  p.c_out, p.low != nullptr ? low_rows : nullptr, p.relu};
      gemm_tile(a + i * p.c_in, p.c_in, b, kCols, p.c_in, p.y + (first + i) * p.c_out + col, p.c_out,
                std::min(kTileRows, rows - i), cols, epilogue);
    }
  }
}

}  // namespace

at::Tensor conv1x1_weight(const at::Tensor& weight) {
  const int64_t c_out = weight.size(0), c_in = weight.size(1), panels = (c_out + kCols - 1) / kCols;
  const at::Tensor w = at::constant_pad_nd(weight.reshape({c_out, c_in}), {0, 0, 0, panels * kCols - c_out});
  return w.view({panels, kCols, c_in}).transpose(1, 2).contiguous();
}

void conv1x1_out(const at::Tensor& x_in, const at::Tensor& weight_p, int64_t out_channels,
                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                 const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                 const c10::optional<at::Tensor>& add_low, bool relu, at::Tensor& y) {
  if (y.numel() == 0) {
    return;
  }
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = weight_p.contiguous();
  const int64_t n = x.size(0), c_in = x.size(1), h = x.size(2), wd = x.size(3), panels = w.size(0);
  std::vector<float> bias_padded(panels * kCols, 0.0f);
  if (bias.has_value()) {
    const at::Tensor b = bias->contiguous();
    std::copy(b.const_data_ptr<float>(), b.const_data_ptr<float>() + out_channels, bias_padded.begin());
  }
  const at::Tensor lo = clamp_lo.has_value() ? clamp_lo->contiguous() : at::Tensor();
  const at::Tensor hi = clamp_hi.has_value() ? clamp_hi->contiguous() : at::Tensor();
  const at::Tensor a = add.has_value() ? add->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const at::Tensor low = add_low.has_value() ? add_low->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  Conv1x1Args p{x.const_data_ptr<float>(),
                w.const_data_ptr<float>(),
                bias_padded.data(),
                lo.defined() ? lo.const_data_ptr<float>() : nullptr,
                hi.defined() ? hi.const_data_ptr<float>() : nullptr,
                a.defined() ? a.const_data_ptr<float>() : nullptr,
                low.defined() ? low.const_data_ptr<float>() : nullptr,
                y.mutable_data_ptr<float>(),
                n * h * wd,
                c_in,
                out_channels,
                h,
                wd,
                relu};
  // Work items: pixel blocks, each split into panel ranges when there are too few blocks for the threads.
  const int64_t blocks = (p.pixels + kBlockRows - 1) / kBlockRows;
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::min(panels, std::max<int64_t>(1, (2 * threads + blocks - 1) / blocks));
  const int64_t items = blocks * splits;
  const int64_t grain = p.pixels * c_in * out_channels < kSerialMacs ? items : 1;
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item / splits, split = item % splits;
      const int64_t first = block * kBlockRows, rows = std::min(kBlockRows, p.pixels - first);
      run_block(p, first, rows, split * panels / splits, (split + 1) * panels / splits);
    }
  });
}

at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& weight_p, int64_t out_channels,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                   const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                   const c10::optional<at::Tensor>& add_low, bool relu) {
  at::Tensor y = at::empty({x.size(0), out_channels, x.size(2), x.size(3)},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  conv1x1_out(x, weight_p, out_channels, bias, clamp_lo, clamp_hi, add, add_low, relu, y);
  return prefers_channels_last(x) ? y : y.contiguous();
}

}  // namespace shg_fast::cpu
