// CUDA registrations: argument checks, device guard and current stream, then the launchers in
// csrc/cuda (which take raw pointers); every launch's cudaError_t is checked.
// Only c10's CUDA headers and the CUDA runtime API: ATen/cuda/CUDAContext.h would pull in
// cuBLAS and cuSPARSE headers, which a toolkit holding only nvcc and the runtime lacks.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cuda/launchers.h"

namespace shg_fast {
namespace {

shg_dtype to_shg_dtype(at::ScalarType type) {
  if (type == at::kDouble) return SHG_FLOAT64;
  if (type == at::kHalf) return SHG_FLOAT16;
  if (type == at::kBFloat16) return SHG_BFLOAT16;
  TORCH_CHECK(type == at::kFloat, "shg_fast: no CUDA kernel for dtype ", type);
  return SHG_FLOAT32;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

void check_cuda_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
}

// The most shared memory one block may opt in to on the current device (the guard has set it).
size_t max_shared_memory_per_block() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<size_t>(bytes);
}

const void* optional_ptr(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

at::Tensor upsample_add_cuda(const at::Tensor& low_in, const at::Tensor& skip_in) {
  check_upsample_add(low_in, skip_in);
  check_cuda_tensor(skip_in, "upsample_add", "skip");
  const c10::cuda::CUDAGuard guard(skip_in.device());
  const bool nhwc = prefers_channels_last(skip_in);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor skip = skip_in.contiguous(format);
  const at::Tensor low = low_in.contiguous(format);
  at::Tensor out = at::empty_like(skip, format);
  if (out.numel() == 0) {
    return out;
  }
  check_launch(shg_upsample_add(low.const_data_ptr(), skip.const_data_ptr(), out.mutable_data_ptr(), skip.size(0),
                                skip.size(1), skip.size(2), skip.size(3), nhwc ? 1 : 0,
                                to_shg_dtype(skip.scalar_type()), c10::cuda::getCurrentCUDAStream()),
               "upsample_add");
  return out;
}

std::tuple<at::Tensor, at::Tensor> decode_heatmaps_cuda(const at::Tensor& heatmaps,
                                                        const c10::optional<at::Tensor>& flipped,
                                                        at::IntArrayRef flip_perm) {
  check_decode_heatmaps(heatmaps, flipped, flip_perm);
  check_cuda_tensor(heatmaps, "decode_heatmaps", "heatmaps");
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  const int64_t N = heatmaps.size(0), K = heatmaps.size(1);
  const auto f32 = heatmaps.options().dtype(at::kFloat);
  at::Tensor coords = at::empty({N, K, 2}, f32);
  at::Tensor maxvals = at::empty({N, K}, f32);
  if (N * K == 0) {
    return {coords, maxvals};
  }
  TORCH_CHECK(!flipped.has_value() || K <= SHG_MAX_FLIP_JOINTS, "decode_heatmaps: the CUDA kernel's flip test takes "
              "at most ", SHG_MAX_FLIP_JOINTS, " joints, got ", K);
  const std::vector<int64_t> hm_strides = heatmaps.strides().vec();
  const std::vector<int64_t> fl_strides = flipped.has_value() ? flipped->strides().vec() : hm_strides;
  check_launch(shg_decode_heatmaps(heatmaps.const_data_ptr(), hm_strides.data(), optional_ptr(flipped),
                                   fl_strides.data(), flip_perm.empty() ? nullptr : flip_perm.data(), N, K,
                                   heatmaps.size(2), heatmaps.size(3), to_shg_dtype(heatmaps.scalar_type()),
                                   coords.mutable_data_ptr<float>(), maxvals.mutable_data_ptr<float>(),
                                   c10::cuda::getCurrentCUDAStream()),
               "decode_heatmaps");
  return {coords, maxvals};
}

at::Tensor residual_block_cuda(const at::Tensor& x_in, const at::Tensor& in_scale, const at::Tensor& in_shift,
                               const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                               const at::Tensor& w3, const at::Tensor& b3, const c10::optional<at::Tensor>& ws,
                               const c10::optional<at::Tensor>& bs, const c10::optional<at::Tensor>& upsample_in,
                               bool pool_input) {
  check_residual_block(x_in, in_scale, in_shift, w1, b1, w2, b2, w3, b3, ws, bs, upsample_in, pool_input);
  check_cuda_tensor(x_in, "residual_block", "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool nhwc = prefers_channels_last(x_in);
  const int64_t N = x_in.size(0), Cin = x_in.size(1), in_H = x_in.size(2), in_W = x_in.size(3);
  // The block's own size: that of the 2x2/stride-2 max-pool of x (floor) with pool_input, which the kernel reads.
  const int64_t H = pool_input ? in_H / 2 : in_H, W = pool_input ? in_W / 2 : in_W;
  const int64_t Cmid = w1.size(0), Cout = w3.size(0);
  // The kernel works in NHWC with 2-D 1x1 weights and tap-major 3x3 weights [dy][dx][out][in]
  // (no copy when w2 is already stored that way: shg_fast.ops.cuda_backend.prepack_for_cuda).
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w2_taps = w2.permute({2, 3, 0, 1}).contiguous();
  const at::Tensor w1c = w1.contiguous(), w3c = w3.contiguous();
  const at::Tensor ws_c = ws.has_value() ? ws->contiguous() : at::Tensor();
  const at::Tensor up = upsample_in.has_value() ? upsample_in->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const at::Tensor scale = in_scale.contiguous(), shift = in_shift.contiguous();
  const at::Tensor b1c = b1.contiguous(), b2c = b2.contiguous(), b3c = b3.contiguous();
  const at::Tensor bs_c = bs.has_value() ? bs->contiguous() : at::Tensor();
  at::Tensor out = at::empty({N, Cout, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() > 0) {
    shg_residual_block_args args{};
    args.x = x.const_data_ptr();
    args.in_scale = scale.const_data_ptr();
    args.in_shift = shift.const_data_ptr();
    args.w1 = w1c.const_data_ptr();
    args.b1 = b1c.const_data_ptr();
    args.w2 = w2_taps.const_data_ptr();
    args.b2 = b2c.const_data_ptr();
    args.w3 = w3c.const_data_ptr();
    args.b3 = b3c.const_data_ptr();
    args.ws = ws_c.defined() ? ws_c.const_data_ptr() : nullptr;
    args.bs = bs_c.defined() ? bs_c.const_data_ptr() : nullptr;
    args.upsample = up.defined() ? up.const_data_ptr() : nullptr;
    args.out = out.mutable_data_ptr();
    args.N = N;
    args.H = H;
    args.W = W;
    args.Cin = Cin;
    args.Cmid = Cmid;
    args.Cout = Cout;
    args.in_H = in_H;
    args.in_W = in_W;
    args.pool_input = pool_input ? 1 : 0;
    // float32 follows torch.backends.cuda.matmul.allow_tf32: TF32 tensor cores, else the exact (slow) path.
    args.allow_tf32 = (x.scalar_type() == at::kFloat && at::globalContext().allowTF32CuBLAS()) ? 1 : 0;
    const shg_dtype dtype = to_shg_dtype(x.scalar_type());
    const size_t smem = shg_residual_block_smem_bytes(&args, dtype);
    const size_t limit = max_shared_memory_per_block();
    TORCH_CHECK(smem <= limit, "residual_block: C_in ", Cin, " and C_mid ", Cmid, " in ", x.scalar_type(), " need ",
                smem, " bytes of shared memory per block, the device allows ", limit);
    check_launch(shg_residual_block(&args, dtype, c10::cuda::getCurrentCUDAStream()), "residual_block");
  }
  return nhwc ? out : out.contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(shg_fast, CUDA, m) {
  m.impl("upsample_add", &upsample_add_cuda);
  m.impl("decode_heatmaps", &decode_heatmaps_cuda);
  m.impl("residual_block", &residual_block_cuda);
}

}  // namespace shg_fast
