// Operator schemas of the shg_fast library and the Python module init of shg_fast._C.
// Per-device kernels are registered in register_cpu.cpp and register_cuda.cpp.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernels.h"

extern "C" {
// `import shg_fast._C` needs a real module init; importing it runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(shg_fast, m) {
  // out = skip + low[n, c, h / 2, w / 2]; low is (N, C, ceil(H/2), ceil(W/2)).
  m.def("upsample_add(Tensor low, Tensor skip) -> Tensor");
  // Argmax with quarter-pixel refinement, optional flip-test averaging (flip_perm: joint
  // permutation, empty for identity). Returns (coords (N,K,2) f32, maxvals (N,K) f32).
  m.def("decode_heatmaps(Tensor heatmaps, Tensor? flipped, int[] flip_perm) -> (Tensor, Tensor)");
  // Eval-mode residual block on shg_fast.fusion.FoldedResidual's tensors (ws/bs: projection skip or
  // None for the identity), plus nearest-2x upsample (N, C_out, ceil(H/2), ceil(W/2)) when given.
  // With pool_input the block's input is max_pool2d(x, 2, 2) (floor; NaN propagates): the output
  // and upsample's H, W are then those of the pooled input (H_x // 2, W_x // 2).
  // The output is channels_last exactly when x is channels_last and not contiguous.
  m.def("residual_block(Tensor x, Tensor in_scale, Tensor in_shift, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
        "Tensor w3, Tensor b3, Tensor? ws, Tensor? bs, Tensor? upsample, bool pool_input=False) -> Tensor");
  // 3x3 convolution (stride 1, padding 1) by Winograd F(4x4, 3x3), CPU only: winograd_weight turns
  // (C_out, C_in, 3, 3) weights into (36, C_in, C_out); winograd_conv3x3 adds bias, then ReLU if asked.
  // The output is channels_last exactly when x is channels_last and not contiguous.
  m.def("winograd_weight(Tensor weight) -> Tensor");
  m.def("winograd_conv3x3(Tensor x, Tensor weight_t, Tensor? bias, bool relu) -> Tensor");
  // The same written into out: (N, C_out, H, W) channels_last-contiguous, x's dtype, not overlapping x.
  m.def("winograd_conv3x3_out(Tensor x, Tensor weight_t, Tensor? bias, bool relu, Tensor(a!) out) -> ()");
  // 1x1 convolution (stride 1), float32 CPU only: conv1x1_weight packs (C_out, C_in, 1, 1) weights into
  // (ceil(C_out / 16), C_in, 16) panels; conv1x1 computes
  // act(conv(clamp(x, clamp_lo, clamp_hi)) + bias + add + upsample(add_low)), act = ReLU if relu, the clamp per
  // input channel (both bounds or neither), add (N, C_out, H, W), add_low (N, C_out, ceil(H/2), ceil(W/2))
  // nearest-upsampled. NaN propagates through clamp and ReLU.
  // The output is channels_last exactly when x is channels_last and not contiguous. conv1x1_out writes
  // into out: (N, C_out, H, W) float32 channels_last-contiguous, not overlapping x or add_low (it may be add).
  m.def("conv1x1_weight(Tensor weight) -> Tensor");
  m.def("conv1x1(Tensor x, Tensor weight_p, int out_channels, Tensor? bias, Tensor? clamp_lo, Tensor? clamp_hi, "
        "Tensor? add, Tensor? add_low, bool relu) -> Tensor");
  m.def("conv1x1_out(Tensor x, Tensor weight_p, int out_channels, Tensor? bias, Tensor? clamp_lo, Tensor? clamp_hi, "
        "Tensor? add, Tensor? add_low, bool relu, Tensor(a!) out) -> ()");
  // "avx2+fma" or "baseline": the transforms' instruction set on this CPU (SHG_FAST_CPU_BASELINE=1 forces
  // baseline). No tensor arguments, so one kernel for every device.
  // Memory-efficient training, CPU only, NCHW-contiguous tensors (shg_fast.training_ops):
  // bn_relu: relu(x * scale + shift) per channel, in dtype (x's, or 16-bit for float32 x); scale,
  // shift (C,) float32 (float64 for float64 x). NaN stays NaN.
  m.def("bn_relu(Tensor x, Tensor scale, Tensor shift, ScalarType dtype) -> Tensor");
  // bn_relu_backward: (dx, d weight, d bias) of relu(batch_norm(x)) on batch statistics mean/invstd,
  // given the ReLU output's gradient (x's dtype, or 16-bit for float32 x); the mask is
  // x * scale + shift > 0. d weight and d bias in scale's dtype.
  m.def("bn_relu_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift, Tensor mean, Tensor invstd) "
        "-> (Tensor, Tensor, Tensor)");
  // max_pool2x2_backward: the input gradient of max_pool2d(x, 2, 2) (floor) given the output's,
  // the argmax recomputed from x as ATen picks it (first maximum; a NaN wins).
  m.def("max_pool2x2_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("winograd_isa() -> str", &shg_fast::cpu::winograd_isa);
}
