// Argument checks shared by the CPU and CUDA registrations: clear errors before any kernel runs.
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

namespace shg_fast {

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", s);
}

// True when t is channels_last-contiguous and not plainly contiguous: the kernels then work in NHWC
// and return NHWC; otherwise NCHW. (A tensor that is both, e.g. with C == 1, counts as NCHW.)
inline bool prefers_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline void check_upsample_add(const at::Tensor& low, const at::Tensor& skip) {
  TORCH_CHECK(low.dim() == 4 && skip.dim() == 4, "upsample_add: low and skip must be 4-D (N, C, H, W), got ",
              low.sizes(), " and ", skip.sizes());
  check_float_dtype(low, "upsample_add", "low");
  TORCH_CHECK(low.scalar_type() == skip.scalar_type(), "upsample_add: low and skip must share a dtype, got ",
              low.scalar_type(), " and ", skip.scalar_type());
  TORCH_CHECK(low.device() == skip.device(), "upsample_add: low and skip must be on one device, got ",
              low.device(), " and ", skip.device());
  TORCH_CHECK(low.size(0) == skip.size(0) && low.size(1) == skip.size(1) &&
                  low.size(2) == (skip.size(2) + 1) / 2 && low.size(3) == (skip.size(3) + 1) / 2,
              "upsample_add: low must be (N, C, ceil(H/2), ceil(W/2)) for skip ", skip.sizes(), ", got ",
              low.sizes());
}

inline void check_decode_heatmaps(const at::Tensor& heatmaps, const c10::optional<at::Tensor>& flipped,
                                  at::IntArrayRef flip_perm) {
  TORCH_CHECK(heatmaps.dim() == 4, "decode_heatmaps: heatmaps must be 4-D (N, K, H, W), got ", heatmaps.sizes());
  TORCH_CHECK(heatmaps.size(2) > 0 && heatmaps.size(3) > 0, "decode_heatmaps: maps must be non-empty, got ",
              heatmaps.sizes());
  check_float_dtype(heatmaps, "decode_heatmaps", "heatmaps");
  if (flipped.has_value()) {
    TORCH_CHECK(flipped->sizes() == heatmaps.sizes(), "decode_heatmaps: flipped must have shape ",
                heatmaps.sizes(), ", got ", flipped->sizes());
    TORCH_CHECK(flipped->scalar_type() == heatmaps.scalar_type(), "decode_heatmaps: flipped dtype ",
                flipped->scalar_type(), " differs from heatmaps ", heatmaps.scalar_type());
    TORCH_CHECK(flipped->device() == heatmaps.device(), "decode_heatmaps: flipped must be on ",
                heatmaps.device(), ", got ", flipped->device());
    const int64_t k = heatmaps.size(1);
    TORCH_CHECK(flip_perm.empty() || static_cast<int64_t>(flip_perm.size()) == k,
                "decode_heatmaps: flip_perm must be empty or have ", k, " entries, got ", flip_perm.size());
    for (int64_t j : flip_perm) {
      TORCH_CHECK(j >= 0 && j < k, "decode_heatmaps: flip_perm entry ", j, " outside 0..", k - 1);
    }
  }
}

// Shape, dtype and device of the folded residual block (see shg_fast.fusion.FoldedResidual); with
// pool_input the block runs on max_pool2d(x, 2, 2), so upsample is relative to the pooled size.
inline void check_residual_block(const at::Tensor& x, const at::Tensor& in_scale, const at::Tensor& in_shift,
                                 const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                 const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3,
                                 const c10::optional<at::Tensor>& ws, const c10::optional<at::Tensor>& bs,
                                 const c10::optional<at::Tensor>& upsample, bool pool_input) {
  TORCH_CHECK(x.dim() == 4, "residual_block: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(!pool_input || (x.size(2) >= 2 && x.size(3) >= 2),
              "residual_block: pool_input needs x of at least 2x2 pixels (2x2 max-pool, stride 2), got ", x.sizes());
  check_float_dtype(x, "residual_block", "x");
  TORCH_CHECK(w1.dim() == 4 && w3.dim() == 4, "residual_block: w1 and w3 must be 4-D conv weights, got ", w1.sizes(),
              " and ", w3.sizes());
  const int64_t cin = x.size(1), mid = w1.size(0), cout = w3.size(0);
  TORCH_CHECK(ws.has_value() == bs.has_value(), "residual_block: ws and bs must be given together");
  TORCH_CHECK(ws.has_value() || cin == cout, "residual_block: the identity skip needs C_in == C_out, got ", cin,
              " and ", cout, " (pass ws and bs for a projection)");
  const auto check = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, "residual_block: ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "residual_block: ", name, " dtype ", t.scalar_type(),
                " differs from x ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "residual_block: ", name, " must be on ", x.device(), ", got ",
                t.device());
  };
  check(in_scale, "in_scale", {cin});
  check(in_shift, "in_shift", {cin});
  check(w1, "w1", {mid, cin, 1, 1});
  check(b1, "b1", {mid});
  check(w2, "w2", {mid, mid, 3, 3});
  check(b2, "b2", {mid});
  check(w3, "w3", {cout, mid, 1, 1});
  check(b3, "b3", {cout});
  if (ws.has_value()) {
    check(*ws, "ws", {cout, cin, 1, 1});
    check(*bs, "bs", {cout});
  }
  if (upsample.has_value()) {
    const int64_t h = pool_input ? x.size(2) / 2 : x.size(2), w = pool_input ? x.size(3) / 2 : x.size(3);
    check(*upsample, "upsample", {x.size(0), cout, (h + 1) / 2, (w + 1) / 2});
  }
}

// Winograd 3x3 convolution: float32/float64 CPU, x (N, C_in, H, W), weight_t (36, C_in, C_out), bias (C_out).
inline void check_winograd_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "winograd_weight: weight must be (C_out, C_in, 3, 3), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
              "winograd_weight: weight must be float32 or float64, got ", weight.scalar_type());
}

inline void check_winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight_t,
                                   const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4, "winograd_conv3x3: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "winograd_conv3x3: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight_t.dim() == 3 && weight_t.size(0) == 36 && weight_t.size(1) == x.size(1),
              "winograd_conv3x3: weight_t must be (36, C_in = ", x.size(1), ", C_out) from winograd_weight, got ",
              weight_t.sizes());
  TORCH_CHECK(weight_t.scalar_type() == x.scalar_type(), "winograd_conv3x3: weight_t dtype ",
              weight_t.scalar_type(), " differs from x ", x.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight_t.size(2), "winograd_conv3x3: bias must be (",
                weight_t.size(2), "), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "winograd_conv3x3: bias dtype ", bias->scalar_type(),
                " differs from x ", x.scalar_type());
  }
}

// 1x1 convolution: float32 CPU, x (N, C_in, H, W), weight_p (ceil(C_out / 16), C_in, 16) from conv1x1_weight,
// per-channel vectors contiguous.
inline void check_conv1x1_vector(const c10::optional<at::Tensor>& t, const char* name, int64_t size) {
  if (t.has_value()) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == size && t->scalar_type() == at::kFloat, "conv1x1: ", name,
                " must be (", size, ",) float32, got ", t->sizes(), " ", t->scalar_type());
    TORCH_CHECK(t->device().is_cpu(), "conv1x1: ", name, " must be a CPU tensor, got ", t->device());
  }
}

inline void check_conv1x1_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1,
              "conv1x1_weight: weight must be (C_out, C_in, 1, 1), got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "conv1x1_weight: weight must be float32, got ",
              weight.scalar_type());
}

inline void check_conv1x1(const at::Tensor& x, const at::Tensor& weight_p, int64_t out_channels,
                          const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& clamp_lo,
                          const c10::optional<at::Tensor>& clamp_hi, const c10::optional<at::Tensor>& add,
                          const c10::optional<at::Tensor>& add_low) {
  TORCH_CHECK(x.dim() == 4, "conv1x1: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "conv1x1: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(out_channels > 0, "conv1x1: out_channels must be positive, got ", out_channels);
  TORCH_CHECK(weight_p.dim() == 3 && weight_p.size(0) == (out_channels + 15) / 16 && weight_p.size(1) == x.size(1) &&
                  weight_p.size(2) == 16 && weight_p.scalar_type() == at::kFloat,
              "conv1x1: weight_p must be (", (out_channels + 15) / 16, ", C_in = ", x.size(1),
              ", 16) float32 from conv1x1_weight, got ", weight_p.sizes(), " ", weight_p.scalar_type());
  check_conv1x1_vector(bias, "bias", out_channels);
  TORCH_CHECK(clamp_lo.has_value() == clamp_hi.has_value(), "conv1x1: clamp_lo and clamp_hi go together");
  check_conv1x1_vector(clamp_lo, "clamp_lo", x.size(1));
  check_conv1x1_vector(clamp_hi, "clamp_hi", x.size(1));
  if (add.has_value()) {
    TORCH_CHECK(add->dim() == 4 && add->size(0) == x.size(0) && add->size(1) == out_channels &&
                    add->size(2) == x.size(2) && add->size(3) == x.size(3) && add->scalar_type() == at::kFloat,
                "conv1x1: add must be (", x.size(0), ", ", out_channels, ", ", x.size(2), ", ", x.size(3),
                ") float32, got ", add->sizes(), " ", add->scalar_type());
  }
  if (add_low.has_value()) {
    TORCH_CHECK(add_low->dim() == 4 && add_low->size(0) == x.size(0) && add_low->size(1) == out_channels &&
                    add_low->size(2) == (x.size(2) + 1) / 2 && add_low->size(3) == (x.size(3) + 1) / 2 &&
                    add_low->scalar_type() == at::kFloat,
                "conv1x1: add_low must be (", x.size(0), ", ", out_channels, ", ", (x.size(2) + 1) / 2, ", ",
                (x.size(3) + 1) / 2, ") float32, got ", add_low->sizes(), " ", add_low->scalar_type());
  }
}

// An out argument: the given sizes and dtype, channels_last-contiguous, on the CPU.
inline void check_out(const char* op, const at::Tensor& out, at::IntArrayRef sizes, at::ScalarType dtype) {
  TORCH_CHECK(out.sizes() == sizes && out.scalar_type() == dtype && out.device().is_cpu(), op, ": out must be ",
              sizes, " ", dtype, " on the CPU, got ", out.sizes(), " ", out.scalar_type(), " on ", out.device());
  TORCH_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": out must be channels_last-contiguous");
}

// out must not share memory with an input it is computed from (ATen's overlap test; `allow_same`: out may be
// the input itself, laid out alike, when each element is read before the same element is written).
inline void check_no_overlap(const char* op, const at::Tensor& out, const at::Tensor& input, const char* name,
                             bool allow_same = false) {
  const at::MemOverlapStatus status = at::get_overlap_status(out, input);
  TORCH_CHECK(status == at::MemOverlapStatus::No || status == at::MemOverlapStatus::TooHard ||
                  (allow_same && status == at::MemOverlapStatus::Full),
              op, ": out must not overlap ", name);
}

// Memory-efficient training ops (CPU): NCHW-contiguous 4-D tensors; per-channel vectors (C,) contiguous in
// the accumulation dtype (float64 for float64 x, else float32).
inline void check_nchw(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", t.sizes());
  check_float_dtype(t, op, name);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be NCHW-contiguous (channels_last runs ATen's ops)");
}

inline void check_channel_vectors(const at::Tensor& x, std::initializer_list<std::pair<const char*, at::Tensor>> vs,
                                  const char* op) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto& [name, v] : vs) {
    TORCH_CHECK(v.dim() == 1 && v.size(0) == x.size(1) && v.is_contiguous(), op, ": ", name,
                " must be a contiguous (C,) vector with C = ", x.size(1), ", got ", v.sizes());
    TORCH_CHECK(v.scalar_type() == acc, op, ": ", name, " must be ", acc, " for x of ", x.scalar_type(), ", got ",
                v.scalar_type());
    TORCH_CHECK(v.device() == x.device(), op, ": ", name, " is on ", v.device(), ", x on ", x.device());
  }
}

inline void check_bn_relu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                          at::ScalarType dtype) {
  check_nchw(x, "bn_relu", "x");
  check_channel_vectors(x, {{"scale", scale}, {"shift", shift}}, "bn_relu");
  const auto s = x.scalar_type();
  TORCH_CHECK(dtype == s || (s == at::kFloat && (dtype == at::kBFloat16 || dtype == at::kHalf)),
              "bn_relu: output dtype must be x's (", s, ") or a 16-bit type for float32 x, got ", dtype);
}

inline void check_bn_relu_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
                                   const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& invstd) {
  check_nchw(x, "bn_relu_backward", "x");
  check_nchw(grad, "bn_relu_backward", "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), "bn_relu_backward: grad ", grad.sizes(), " and x ", x.sizes(),
              " differ in shape");
  TORCH_CHECK(grad.device() == x.device(), "bn_relu_backward: grad and x must be on one device");
  const auto s = x.scalar_type(), g = grad.scalar_type();
  TORCH_CHECK(g == s || (s == at::kFloat && (g == at::kBFloat16 || g == at::kHalf)),
              "bn_relu_backward: grad dtype must be x's (", s, ") or a 16-bit type for float32 x, got ", g);
  TORCH_CHECK(x.size(0) * x.size(2) * x.size(3) > 1,
              "bn_relu_backward: expected more than 1 value per channel, got input size ", x.sizes());
  check_channel_vectors(x, {{"scale", scale}, {"shift", shift}, {"mean", mean}, {"invstd", invstd}},
                        "bn_relu_backward");
}

inline void check_max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& x) {
  check_nchw(x, "max_pool2x2_backward", "x");
  check_nchw(grad, "max_pool2x2_backward", "grad");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "max_pool2x2_backward: grad dtype ", grad.scalar_type(),
              " differs from x ", x.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "max_pool2x2_backward: grad and x must be on one device");
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(1) == x.size(1) && grad.size(2) == x.size(2) / 2 &&
                  grad.size(3) == x.size(3) / 2,
              "max_pool2x2_backward: grad must be (N, C, H // 2, W // 2) for x ", x.sizes(), ", got ", grad.sizes());
}

}  // namespace shg_fast
