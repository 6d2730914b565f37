// C-style launchers of the CUDA kernels in csrc/cuda: raw pointers, sizes, a dtype tag and a
// stream in, a cudaError_t out. No torch headers here or in the .cu files, so `nvcc -c` can
// compile-check them on any machine; csrc/register_cuda.cpp is the torch glue.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Most joints the flip test of shg_decode_heatmaps takes (its permutation is a kernel parameter).
#define SHG_MAX_FLIP_JOINTS 256

// Element type of the floating-point tensors passed to a launcher.
typedef enum { SHG_FLOAT32 = 0, SHG_FLOAT64 = 1, SHG_FLOAT16 = 2, SHG_BFLOAT16 = 3 } shg_dtype;

// out = skip + low[n, c, h / 2, w / 2]. skip and out are (N, C, H, W), low is
// (N, C, ceil(H/2), ceil(W/2)); all three contiguous in one memory format: NCHW when
// channels_last == 0, NHWC otherwise. Any element count (64-bit indexing when needed).
cudaError_t shg_upsample_add(const void* low, const void* skip, void* out, int64_t N, int64_t C, int64_t H,
                             int64_t W, int channels_last, shg_dtype dtype, cudaStream_t stream);

// Per (n, k) map of heatmaps (N, K, H, W): first maximum in row-major order (NaN counts as the
// largest), quarter-pixel refinement when the peak is interior; writes coords (N, K, 2) and
// maxvals (N, K), both contiguous float32. Strides are in elements, any layout. With flipped
// (same shape, its own strides) the decoded map is (heatmaps[n, k] + flipped[n, perm[k], y,
// W-1-x]) * 0.5 in float32; flip_perm is a HOST array of K int64 (copied into the kernel's
// parameters, at most SHG_MAX_FLIP_JOINTS entries) or NULL for the identity.
cudaError_t shg_decode_heatmaps(const void* heatmaps, const int64_t heatmap_strides[4], const void* flipped,
                                const int64_t flipped_strides[4], const int64_t* flip_perm, int64_t N,
                                int64_t K, int64_t H, int64_t W, shg_dtype dtype, float* coords, float* maxvals,
                                cudaStream_t stream);

// The folded eval-mode residual block (shg_fast.fusion.FoldedResidual), all tensors of one
// dtype, contiguous, on one device. Activations are NHWC. Zero-initialise (`args{}`) and set
// every field; in_H = in_W = 0 without pool_input reads as in_H = H, in_W = W.
typedef struct {
  const void* x;         // (N, H, W, Cin) residual-stream input
  const void* in_scale;  // (Cin) bn1 scale, applied before ReLU
  const void* in_shift;  // (Cin) bn1 shift
  const void* w1;        // (Cmid, Cin) conv1x1 with bn2 folded
  const void* b1;        // (Cmid)
  const void* w2;        // (3, 3, Cmid_out, Cmid_in) conv3x3 with bn3 folded, tap-major: w2[dy][dx][o][i]
  const void* b2;        // (Cmid)
  const void* w3;        // (Cout, Cmid) last conv1x1
  const void* b3;        // (Cout)
  const void* ws;        // (Cout, Cin) projection skip, or NULL for the identity skip (Cin == Cout)
  const void* bs;        // (Cout) projection bias, NULL exactly when ws is NULL
  const void* upsample;  // (N, ceil(H/2), ceil(W/2), Cout) nearest-2x added last, or NULL
  int allow_tf32;        // float32 only: 1 runs the GEMMs on TF32 tensor cores, 0 keeps exact fp32 products (slow)
  void* out;             // (N, H, W, Cout)
  int64_t N, H, W, Cin, Cmid, Cout;
  int64_t in_H, in_W;    // dims of x: (N, in_H, in_W, Cin); equal to H, W unless pool_input
  int pool_input;        // 1: the block's input is the 2x2/stride-2 max-pool of x (H = in_H / 2, W = in_W / 2, floor); NaN propagates
} shg_residual_block_args;

// Dynamic shared memory (bytes) one block of shg_residual_block needs for these arguments at
// least (its smallest tile; the launcher takes a larger one when it fits); the caller compares
// it with the device's opt-in limit before launching.
size_t shg_residual_block_smem_bytes(const shg_residual_block_args* args, shg_dtype dtype);

// The tiling shg_residual_block launches with on a device of `sms` SMs, `smem_limit` bytes of
// opt-in shared memory per block and thread-block clusters when `clusters` != 0 (sm_90+):
// *tile = S (S x S output pixels per tile; 0 when nothing fits), *cluster = R (CTAs per tile,
// each computing 1/R of every stage's channels). Pure host arithmetic, no CUDA call.
void shg_residual_block_tiling(const shg_residual_block_args* args, shg_dtype dtype, int sms, int smem_limit,
                               int clusters, int* tile, int* cluster);

// The dynamic shared memory (bytes) per CTA shg_residual_block launches with under the same
// conditions, and *resident = 1 when each CTA then loads its whole share of the weights (1/R of
// every GEMM's) into shared memory at its start instead of streaming it in chunks (tensor-core
// path, when that fits the limit and the grid still runs in one wave). Pure host arithmetic.
size_t shg_residual_block_launch_smem(const shg_residual_block_args* args, shg_dtype dtype, int sms, int smem_limit,
                                      int clusters, int* resident);

// The whole block in one kernel launch (see residual_block.cu); on sm_90+ a programmatic
// dependent launch (it may start while the previous kernel on the stream runs, and waits for it
// before reading anything; safe on any stream and under CUDA-graph capture). Returns cudaErrorInvalidValue
// for arguments outside the contract (including more shared memory than the device allows).
cudaError_t shg_residual_block(const shg_residual_block_args* args, shg_dtype dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
