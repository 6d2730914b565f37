// CPU kernels of the memory-efficient training path (shg_fast.training_ops), NCHW-contiguous tensors:
//   bn_relu               out = relu(x * scale[c] + shift[c]), one pass, cast to the output dtype;
//   bn_relu_backward      dx, d weight, d bias of relu(BN(x)) on batch statistics, from the ReLU
//                         output's gradient and x alone (mask and x-hat recomputed): two passes;
//   max_pool2x2_backward  the 2x2/stride-2 max-pool's input gradient, the argmax recomputed from x
//                         with ATen's rule (first maximum of the window; a NaN wins, the last one).
// Arithmetic in float (double for double tensors). Per-channel sums: a SIMD reduction in float over
// each (n, c) plane (`omp simd`: the compiler may reorder it), the planes added in double.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "kernels.h"

namespace shg_fast::cpu {
namespace {

// Work per parallel_for chunk, in elements, so small maps are not split across threads.
constexpr int64_t kGrainElements = 32768;

template <typename in_t, typename out_t>
void bn_relu_nchw(const in_t* x,                      // (N, C, HW) input
                  const at::opmath_type<in_t>* scale,  // (C,) BN scale: weight * invstd
                  const at::opmath_type<in_t>* shift,  // (C,) BN shift: bias - mean * scale
                  out_t* out,                          // (N, C, HW) output
                  int64_t planes, int64_t C, int64_t HW) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(HW, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {  // p = n * C + c
      const acc_t s = scale[p % C], b = shift[p % C];
      const in_t* xp = x + p * HW;
      out_t* op = out + p * HW;
      for (int64_t i = 0; i < HW; ++i) {
        // std::max(v, 0) keeps a NaN v (the comparison is false), as torch.relu does.
        op[i] = static_cast<out_t>(std::max(static_cast<acc_t>(xp[i]) * s + b, acc_t(0)));
      }
    }
  });
}

// The ReLU's backward for one element: the gradient where relu's input x * scale + shift > 0, else 0.
// Both operands are read unconditionally and the select has no branch, so the loops vectorise.
template <typename in_t, typename grad_t, typename acc_t = at::opmath_type<in_t>>
inline acc_t masked_grad(in_t x, grad_t g, acc_t scale, acc_t shift) {
  const acc_t gv = static_cast<acc_t>(g);
  return static_cast<acc_t>(x) * scale + shift > acc_t(0) ? gv : acc_t(0);
}

// Per-channel sums of pass 1: t = grad where relu's input y = x * scale + shift > 0, else 0;
// sums[c] = (sum t, sum t * (x - mean)).
template <typename in_t, typename grad_t>
void bn_relu_backward_sums(const grad_t* g, const in_t* x, const at::opmath_type<in_t>* scale,
                           const at::opmath_type<in_t>* shift, const at::opmath_type<in_t>* mean, double* sum_t,
                           double* sum_tx, int64_t N, int64_t C, int64_t HW) {
  using acc_t = at::opmath_type<in_t>;
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const acc_t s = scale[c], b = shift[c], m = mean[c];
      double total_t = 0, total_tx = 0;
      for (int64_t n = 0; n < N; ++n) {
        const in_t* xp = x + (n * C + c) * HW;
        const grad_t* gp = g + (n * C + c) * HW;
        acc_t plane_t = 0, plane_tx = 0;
#pragma omp simd reduction(+ : plane_t, plane_tx)
        for (int64_t i = 0; i < HW; ++i) {
          const acc_t t = masked_grad(xp[i], gp[i], s, b);
          plane_t += t;
          plane_tx += t * (static_cast<acc_t>(xp[i]) - m);
        }
        total_t += plane_t;
        total_tx += plane_tx;
      }
      sum_t[c] = total_t;
      sum_tx[c] = total_tx;
    }
  });
}

// Pass 2: dx = scale * (t - k1 - (x - mean) * k2) with k1 = sum t / M, k2 = invstd^2 * sum t (x - mean) / M.
template <typename in_t, typename grad_t>
void bn_relu_backward_dx(const grad_t* g, const in_t* x, const at::opmath_type<in_t>* scale,
                         const at::opmath_type<in_t>* shift, const at::opmath_type<in_t>* mean,
                         const at::opmath_type<in_t>* k1, const at::opmath_type<in_t>* k2, in_t* dx, int64_t planes,
                         int64_t C, int64_t HW) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(HW, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      const acc_t s = scale[c], b = shift[c], m = mean[c], a = k1[c], k = k2[c];
      const in_t* xp = x + p * HW;
      const grad_t* gp = g + p * HW;
      in_t* dp = dx + p * HW;
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t t = masked_grad(xp[i], gp[i], s, b);
        dp[i] = static_cast<in_t>(s * (t - a - (static_cast<acc_t>(xp[i]) - m) * k));
      }
    }
  });
}

template <typename scalar_t>
void max_pool2x2_backward_nchw(const scalar_t* g,  // (planes, Ho, Wo) gradient of the pooled output
                               const scalar_t* x,  // (planes, H, W) the pool's input
                               scalar_t* dx,       // (planes, H, W) output, every element written
                               int64_t planes, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(H * W, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* xp = x + p * H * W;
      const scalar_t* gp = g + p * Ho * Wo;
      scalar_t* dp = dx + p * H * W;
      for (int64_t i = 0; i < Ho; ++i) {
        const scalar_t* x0 = xp + 2 * i * W;
        scalar_t* d0 = dp + 2 * i * W;
        for (int64_t j = 0; j < Wo; ++j) {
          // ATen's scan order and update rule (MaxPoolKernel.cpp): first maximum, any NaN replaces.
          // Branch-free selects (the window's winner is data-dependent: a branch would mispredict).
          using acc_t = at::opmath_type<scalar_t>;
          const acc_t v[4] = {acc_t(x0[2 * j]), acc_t(x0[2 * j + 1]), acc_t(x0[W + 2 * j]), acc_t(x0[W + 2 * j + 1])};
          int64_t best = 0;
          acc_t best_v = v[0];
          for (int64_t q = 1; q < 4; ++q) {
            const bool take = v[q] > best_v || v[q] != v[q];
            best_v = take ? v[q] : best_v;
            best = take ? q : best;
          }
          const scalar_t gv = gp[i * Wo + j], zero(0);
          d0[2 * j] = best == 0 ? gv : zero;
          d0[2 * j + 1] = best == 1 ? gv : zero;
          d0[W + 2 * j] = best == 2 ? gv : zero;
          d0[W + 2 * j + 1] = best == 3 ? gv : zero;
        }
        if (W % 2) {
          d0[W - 1] = scalar_t(0);
          d0[2 * W - 1] = scalar_t(0);
        }
      }
      if (H % 2) {
        std::fill(dp + (H - 1) * W, dp + H * W, scalar_t(0));
      }
    }
  });
}

// Calls f(in_t{}, other_t{}) for x's dtype and a second dtype that is x's, or a 16-bit type with float x.
template <typename F>
void dispatch_pair(at::ScalarType x_type, at::ScalarType other, const char* op, F&& f) {
  if (x_type == at::kFloat && other == at::kBFloat16) {
    f(float{}, at::BFloat16{});
  } else if (x_type == at::kFloat && other == at::kHalf) {
    f(float{}, at::Half{});
  } else {
    TORCH_CHECK(x_type == other, op, ": unsupported dtype pair ", x_type, " and ", other);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_type, "bn_train_cpu",
                                    [&] { f(scalar_t{}, scalar_t{}); });
  }
}

}  // namespace

at::Tensor bn_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, at::ScalarType dtype) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  if (out.numel() == 0) {
    return out;
  }
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  dispatch_pair(x.scalar_type(), dtype, "bn_relu", [&](auto in_v, auto out_v) {
    using in_t = decltype(in_v);
    using out_t = decltype(out_v);
    using acc_t = at::opmath_type<in_t>;
    bn_relu_nchw(x.const_data_ptr<in_t>(), scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(),
                 out.mutable_data_ptr<out_t>(), x.size(0) * C, C, HW);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& scale, const at::Tensor& shift,
                                                                const at::Tensor& mean, const at::Tensor& invstd) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor dx = at::empty_like(x);
  const auto acc_options = scale.options();
  std::vector<double> sum_t(C), sum_tx(C);
  at::Tensor dweight = at::empty({C}, acc_options), dbias = at::empty({C}, acc_options);
  dispatch_pair(x.scalar_type(), grad.scalar_type(), "bn_relu_backward", [&](auto in_v, auto grad_v) {
    using in_t = decltype(in_v);
    using grad_t = decltype(grad_v);
    using acc_t = at::opmath_type<in_t>;
    const acc_t* s = scale.const_data_ptr<acc_t>();
    const acc_t* b = shift.const_data_ptr<acc_t>();
    const acc_t* m = mean.const_data_ptr<acc_t>();
    const acc_t* inv = invstd.const_data_ptr<acc_t>();
    bn_relu_backward_sums(grad.const_data_ptr<grad_t>(), x.const_data_ptr<in_t>(), s, b, m, sum_t.data(),
                          sum_tx.data(), N, C, HW);
    const double count = static_cast<double>(N * HW);
    std::vector<acc_t> k1(C), k2(C);
    acc_t* dw = dweight.mutable_data_ptr<acc_t>();
    acc_t* db = dbias.mutable_data_ptr<acc_t>();
    for (int64_t c = 0; c < C; ++c) {
      const double istd = static_cast<double>(inv[c]);
      db[c] = static_cast<acc_t>(sum_t[c]);
      dw[c] = static_cast<acc_t>(sum_tx[c] * istd);
      k1[c] = static_cast<acc_t>(sum_t[c] / count);
      k2[c] = static_cast<acc_t>(sum_tx[c] * istd * istd / count);
    }
    bn_relu_backward_dx(grad.const_data_ptr<grad_t>(), x.const_data_ptr<in_t>(), s, b, m, k1.data(), k2.data(),
                        dx.mutable_data_ptr<in_t>(), N * C, C, HW);
  });
  return {dx, dweight, dbias};
}

at::Tensor max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& x) {
  at::Tensor dx = at::empty_like(x);
  if (dx.numel() == 0) {
    return dx;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_backward", [&] {
    max_pool2x2_backward_nchw(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                              dx.mutable_data_ptr<scalar_t>(), x.size(0) * x.size(1), x.size(2), x.size(3));
  });
  return dx;
}

}  // namespace shg_fast::cpu
