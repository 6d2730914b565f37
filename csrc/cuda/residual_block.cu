// CUDA kernel: the eval-mode pre-activation residual block (shg_fast.fusion.FoldedResidual) in
// one launch. A cluster of R thread blocks ("CTAs", R in {1, 2, 4, 8}) owns an S x S tile of
// output pixels of one image (S in {8, 4, 2}, chosen per map size); CTA r of the cluster
// computes the r-th 1/R of the channels of every GEMM stage and the CTAs exchange their slices
// of the intermediates through distributed shared memory (sm_90 clusters), so no stage is
// recomputed across CTAs and every weight is read once per tile:
//
//   A  a1 = relu(xin * in_scale + in_shift)      halo ((S+2)^2 pixels), all Cin   -> smem a1
//        xin = x, or the 2x2/stride-2 max of x (pool_input; NaN propagates)
//   B  h1 = relu(a1 . w1^T + b1)                 halo, channels of slice r       -> smem h1
//        0 outside the image (zero padding of the conv3x3); then the other CTAs' slices are
//        copied in (cluster barrier, DSMEM reads): every CTA holds all Cmid channels of h1
//   C  h2 = relu(conv3x3(h1) + b2)               tile (S^2 pixels), slice r      -> smem h2 (over a1)
//        then gathered like h1
//   D  out = h2 . w3^T (+ xin . ws^T + bs) + b3 (+ xin) (+ upsample[n, y/2, x/2])
//                                                tile, output channels of slice r -> global
//
// Each stage is a GEMM C[M x Nslice] = A[M x K] . W[Nslice x K]^T with A in shared memory
// (activation rows: pixels; a row is K elements plus 16 bytes of padding, so the 8 rows one
// ldmatrix reads fall in 8 different 16-byte bank groups) and W the weights, rows of K
// elements in global memory. The K dimension is cut into segments (stage C: the 9 taps; stage
// D: h2 then, for the projection, xin), streamed in chunks of about 8 KB of weights.
//
// Tensor-core path (fp16, bf16, and fp32 as TF32 when the caller allows TF32): 8 warps; the
// weights of a chunk (up to kNPass rows x 128 bytes of K, or fewer rows x up to 1 KB; rows
// padded by 16 bytes) are copied to shared memory by cp.async into one of kStages = 3 buffers
// (chunks c+1 and c+2 load while chunk c is multiplied) and read by every warp. Warp tile: 16
// rows x 32 columns (4 mma n8 tiles); warp w takes warp tiles w, w + 8 (at most kWarpTiles of
// them per pass over kNPass columns; tile t is row block t / groups, column group t % groups). Per k-step of
// 32 bytes (k16 for 16-bit, k8 for TF32) a warp loads A with one ldmatrix.x4 and B with two
// ldmatrix.x4 and issues 4 mma.sync (m16n8k16 f16/bf16, or m16n8k8 tf32), fp32 accumulation.
// Rows past M (the padding of M to 16) and columns past the slice read clamped addresses and
// are dropped by the epilogue.
//
// Resident weights (tensor-core path; the launcher's choice when the CTA's whole share of the
// weights, 1/R of every GEMM's rows, fits in shared memory next to the activations and the grid
// still runs in one wave: batch 1 on 32x32 down to 4x4 maps): the CTA copies its share to
// shared memory by cp.async at its start, in the same wait as x, and the three GEMMs read it
// there (rows padded by 16 bytes, as the activations). One L2 round trip instead of a chain of
// chunk round trips; nothing overlaps the MMAs with loads afterwards.
//
// Programmatic dependent launch (sm_90+): the launcher lets the grid start while the previous
// kernel on the stream still runs. Before griddepcontrol.wait a CTA with resident weights only
// prefetches its share into L2 (cp.async.bulk.prefetch.L2: no data reaches the CTA, so weights
// the previous kernel writes cannot be read stale); then every CTA waits for the previous grid's
// completion and memory flush, lets the next kernel's CTAs start
// (griddepcontrol.launch_dependents) and reads x. Correct on a plain stream and in a CUDA graph
// (the attribute becomes a programmatic edge), and transitively: every grid triggers its
// dependents only after its own wait.
//
// Exact path (fp64; fp32 without TF32; channel counts the tensor-core path does not take; x or
// weights not 16-byte aligned): the same stages with one thread per output element and weights
// read from global memory, fp64 accumulation for double, fp32 otherwise; R = 1. Slow (no tensor
// cores): the Python `cuda` backend refuses exact float32 blocks (they run on the Triton convs).
//
// Without a GPU this was checked by a float64 emulation of the tiling, cluster slices, gathers
// and the ldmatrix / mma.sync fragment layouts of the PTX ISA against the reference (odd sizes,
// partial tiles, pool_input with NaN, R = 1..4, multi-pass and multi-chunk GEMMs); the resident
// weights and the programmatic launch came later and are compile-checked only.
#include <cooperative_groups.h>

#include <type_traits>

#include "common.cuh"

namespace shg_fast::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Two CTAs per SM, declared: the tiling (choose_tiling's resident CTA slots) and the resident-weight rule
// count on two CTAs sharing an SM, which needs at most 128 registers per thread (65536 / (2 x 256)).
// With the bound ptxas must fit 128; without it two CTAs would hold only while ptxas happened to land there.
constexpr int kMinCtasPerSm = 2;
constexpr int kChunkBytes = 128;                   // K bytes of a weight chunk of kNPass rows
constexpr int kRowPad = 16;                        // padding bytes after every shared-memory row
constexpr int kBStride = kChunkBytes + kRowPad;    // bytes between weight rows of a chunk
constexpr int kNPass = 64;                         // weight rows (output channels) per pass
constexpr int kBBufferBytes = kNPass * kBStride;   // one of the kStages weight buffers
constexpr int kStages = 3;                         // weight buffers: kStages - 1 chunks in flight
constexpr int kWarpTiles = 2;                      // 16 x 32 warp tiles per warp and pass
constexpr int kTiles[] = {8, 4, 2};                // output tile sizes S, largest first
constexpr int kMaxCluster = 8;                     // portable cluster size
constexpr int kMaxHalo = (8 + 2) * (8 + 2);

// Stage B's M (the halo of the largest tile) fits the warp tiles of one pass.
static_assert((kMaxHalo + 15) / 16 * (kNPass / 32) <= kWarps * kWarpTiles, "stage B overflows the warp tiles");

__host__ __device__ inline size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Bytes of one shared-memory activation row of `channels` elements.
__host__ __device__ inline int row_bytes(int channels, int elem) { return channels * elem + kRowPad; }

// Byte offsets of the shared-memory regions of one CTA for tile size S.
struct SmemLayout {
  size_t a1_h2;  // a1 ((S+2)^2 rows x Cin), later h2 (S^2 rows x Cmid)
  size_t h1;     // (S+2)^2 rows x Cmid
  size_t xs;     // xin of the tile (S^2 rows x Cin): projection only
  size_t wbuf;   // tensor-core path: kStages weight chunk buffers, or with resident weights the CTA's
                 // whole weight share, rows padded like the activations: w1 (Cmid / R rows x Cin), w2
                 // (9 taps x Cmid / R rows x Cmid), w3 (Cout / R rows x Cmid), ws (Cout / R rows x Cin)
  size_t w2, w3, ws;  // resident weights: offsets of w2, w3, ws (w1 at wbuf)
  size_t total;
};

// `resident` (tensor-core path only): the CTA's slices of all weights stay in shared memory for the
// whole kernel (`R` CTAs per cluster) instead of streaming through the kStages chunk buffers.
__host__ __device__ inline SmemLayout smem_layout(int S, int64_t Cin, int64_t Cmid, int64_t Cout, int elem, bool mma,
                                                  bool projection, int R, bool resident) {
  const size_t halo = static_cast<size_t>(S + 2) * (S + 2), tile = static_cast<size_t>(S) * S;
  const size_t in_row = row_bytes(static_cast<int>(Cin), elem), mid_row = row_bytes(static_cast<int>(Cmid), elem);
  const size_t a1 = halo * in_row, h2 = tile * mid_row;
  SmemLayout s;
  s.a1_h2 = 0;
  s.h1 = align128(a1 > h2 ? a1 : h2);
  s.xs = s.h1 + align128(halo * mid_row);
  s.wbuf = s.xs + (projection ? align128(tile * in_row) : 0);
  const size_t mid_slice = static_cast<size_t>(Cmid / R), out_slice = static_cast<size_t>(Cout / R);
  s.w2 = s.wbuf + align128(mid_slice * in_row);
  s.w3 = s.w2 + align128(9 * mid_slice * mid_row);
  s.ws = s.w3 + align128(out_slice * mid_row);
  if (!mma) {
    s.total = s.wbuf;
  } else if (resident) {
    s.total = s.ws + (projection ? align128(out_slice * in_row) : 0);
  } else {
    s.total = s.wbuf + static_cast<size_t>(kStages) * kBBufferBytes;
  }
  return s;
}

// The kernel's view of shg_residual_block_args, typed, plus the tiling the launcher chose.
template <typename T>
struct Params {
  const T* __restrict__ x;         // (N, in_H, in_W, Cin)
  const T* __restrict__ in_scale;  // (Cin)
  const T* __restrict__ in_shift;  // (Cin)
  const T* __restrict__ w1;        // (Cmid, Cin)
  const T* __restrict__ b1;        // (Cmid)
  const T* __restrict__ w2;        // (9, Cmid, Cmid) tap-major
  const T* __restrict__ b2;        // (Cmid)
  const T* __restrict__ w3;        // (Cout, Cmid)
  const T* __restrict__ b3;        // (Cout)
  const T* __restrict__ ws;        // (Cout, Cin) or null
  const T* __restrict__ bs;        // (Cout) or null
  const T* __restrict__ upsample;  // (N, ceil(H/2), ceil(W/2), Cout) or null
  T* __restrict__ out;             // (N, H, W, Cout)
  int H, W, in_H, in_W;            // block (output) dims and the dims of x
  int pool;                        // 1: xin is the 2x2 max-pool of x
  int Cin, Cmid, Cout;
  int S;                           // output tile size (S x S pixels)
  int R;                           // CTAs per cluster: each computes 1/R of every stage's channels
  int resident;                    // 1: the CTA's weight slices are loaded to shared memory up front
  int tiles_w;                     // ceil(W / S)
  int tiles_per_image;             // ceil(H / S) * tiles_w
};

// max that propagates NaN from either side (torch.max_pool2d does; fmaxf would drop it).
template <typename Acc>
__device__ __forceinline__ Acc nan_max(Acc a, Acc b) { return (a > b || a != a) ? a : b; }

// xin[n, gy, gx, c]: x itself, or the max of its 2x2 window at (2 gy, 2 gx) when pooling.
template <typename T, typename Acc>
__device__ __forceinline__ Acc load_xin(const Params<T>& p, int64_t n, int gy, int gx, int c) {
  if (!p.pool) return to_acc<Acc>(p.x[((n * p.H + gy) * p.W + gx) * p.Cin + c]);
  const T* base = p.x + ((n * p.in_H + 2 * gy) * p.in_W + 2 * gx) * p.Cin + c;
  const int64_t row = static_cast<int64_t>(p.in_W) * p.Cin;
  const Acc top = nan_max(to_acc<Acc>(base[0]), to_acc<Acc>(base[p.Cin]));
  const Acc bottom = nan_max(to_acc<Acc>(base[row]), to_acc<Acc>(base[row + p.Cin]));
  return nan_max(top, bottom);
}

// ---- PTX wrappers (sm_80+) -------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Programmatic dependent launch (sm_90+; no-ops when the launch did not ask for it, and before sm_90).
// grid_dependency_wait: this thread waits until the kernels this launch depends on have completed and
// their writes are visible. allow_dependents_launch: the next kernel on the stream may start its CTAs
// (its own wait still waits for this whole grid).
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}
// Fetch `bytes` (a multiple of 16; ptr 16-byte aligned) at `ptr` into L2: one bulk prefetch (sm_90+; before
// sm_90 nothing), no result and nothing to wait for.
__device__ __forceinline__ void prefetch_l2(const void* ptr, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(ptr), "r"(bytes) : "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

// Four 8x8 matrices of 16-bit elements (rows of 16 bytes; lane l gives the row address of matrix
// l / 8, row l % 8); register i of lane l holds row l / 4, 16-bit columns 2 (l % 4), +1 of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// c (16 x 8, fp32) += a (16 x k) . b (k x 8), one warp; k = 32 bytes of the element type. `shape_types`
// names the instruction's shape and operand types, e.g. "m16n8k16.row.col.f32.f16.f16.f32".
#define SHG_MMA_SYNC(shape_types)                                                                          \
  asm volatile("mma.sync.aligned." shape_types " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
struct Mma;
template <>
struct Mma<__half> {
  __device__ __forceinline__ static void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    SHG_MMA_SYNC("m16n8k16.row.col.f32.f16.f16.f32");
  }
};
template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    SHG_MMA_SYNC("m16n8k16.row.col.f32.bf16.bf16.f32");
  }
};
template <>
struct Mma<float> {  // TF32: operands rounded to TF32 by to_operand (as cuBLAS does), fp32 accumulation
  __device__ __forceinline__ static void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    SHG_MMA_SYNC("m16n8k8.row.col.f32.tf32.tf32.f32");
  }
};
#undef SHG_MMA_SYNC

// Registers loaded by ldmatrix as mma operands: as they are for 16-bit types; fp32 values rounded
// to the nearest TF32 (cvt.rna; the tensor cores would otherwise drop the low 13 mantissa bits).
template <typename T, int kCount>
__device__ __forceinline__ void to_operand(uint32_t (&r)[kCount]) {
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int i = 0; i < kCount; ++i) asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r[i]) : "f"(__uint_as_float(r[i])));
  }
}

// ---- cluster helpers (a cluster of one CTA on GPUs before sm_90) -----------------------------

__device__ __forceinline__ int cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return static_cast<int>(cg::this_cluster().block_rank());
#else
  return 0;
#endif
}

// Barrier over the cluster's threads; shared-memory writes before it are visible to every CTA after it.
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::this_cluster().sync();
#else
  __syncthreads();
#endif
}

// The address of `local` (this CTA's shared memory) in CTA `rank` of the cluster.
__device__ __forceinline__ const unsigned char* peer(const unsigned char* local, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cg::this_cluster().map_shared_rank(local, static_cast<unsigned>(rank));
#else
  return local;
#endif
}

// After a cluster barrier: copy columns [q * cols, (q + 1) * cols) of `rows` rows (stride `stride`
// bytes) from every other CTA q of the cluster into this CTA's copy; `cols * elem` is a multiple of 16.
__device__ __forceinline__ void gather_slices(unsigned char* buf, int rows, int stride, int col_bytes, int R, int rank) {
  const int pieces = col_bytes / 16;
  const int per_peer = rows * pieces;
  for (int e = threadIdx.x; e < (R - 1) * per_peer; e += kThreads) {
    const int q = (rank + 1 + e / per_peer) % R, rest = e % per_peer;
    const size_t offset = static_cast<size_t>(rest / pieces) * stride + q * col_bytes + (rest % pieces) * 16;
    *reinterpret_cast<uint4*>(buf + offset) = *reinterpret_cast<const uint4*>(peer(buf, q) + offset);
  }
}

// ---- the two GEMM engines ---------------------------------------------------------------------

// A position in the K dimension: segment s, byte offset k inside it.
struct KCursor {
  int s, k;
};

// Walk the pieces of the chunk that starts at `at` and holds up to `chunk_bytes` of K: each piece
// is (segment, K byte offset, byte offset in the chunk, length), never crossing a segment's end.
// Returns the cursor after the chunk. seg_bytes(s) is a multiple of 32 bytes for every segment.
template <typename SegBytes, typename Piece>
__device__ __forceinline__ KCursor walk_chunk(KCursor at, int segments, int chunk_bytes, SegBytes seg_bytes,
                                              Piece piece) {
  int offset = 0;
  while (offset < chunk_bytes && at.s < segments) {
    const int length = min(chunk_bytes - offset, seg_bytes(at.s) - at.k);
    piece(at.s, at.k, offset, length);
    offset += length;
    at.k += length;
    if (at.k == seg_bytes(at.s)) at = KCursor{at.s + 1, 0};
  }
  return at;
}

// C[m, n_begin + j] = sum over segments s of A_s[m, :] . W_s[n_begin + j, :] for m < M, j < n_count;
// epilogue(m, n, value) takes each element. a_row(s, m): the shared-memory row of A_s (bytes);
// b_row(s, n): the global row of W_s (16-byte aligned); seg_bytes(s): K bytes of segment s, a
// multiple of 32. wbuf: kStages * kBBufferBytes of shared memory. Called by all threads of the CTA.
//
// The output channels go in passes of up to kNPass. A pass streams its weights in chunks of
// np rows x chunk_bytes of K (chunk_bytes = 128 f, the largest f in 1, 2, 4, 8 whose padded rows
// fit one buffer: narrow passes take longer chunks, so every chunk moves about 8 KB); a chunk may
// span segments (stage C: several taps), each piece multiplied against its own A rows.
// With `resident` the weights are already in shared memory (loaded at the kernel's start):
// b_smem(s, j) is the row of W_s[n_begin + j] there (seg_bytes(s) + kRowPad bytes apart), and
// wbuf is not used.
template <typename T, typename ARow, typename BRow, typename BSmem, typename SegBytes, typename Epilogue>
__device__ __forceinline__ void mma_gemm(unsigned char* wbuf, bool resident, int M, int n_begin, int n_count,
                                         int segments, SegBytes seg_bytes, ARow a_row, BRow b_row, BSmem b_smem,
                                         Epilogue epilogue) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m_blocks = (M + 15) / 16;
  for (int p0 = 0; p0 < n_count; p0 += kNPass) {
    const int np = min(kNPass, n_count - p0);  // weight rows (output channels) of this pass
    const int groups = (np + 31) / 32;         // 32-column groups of the pass
    const int warp_tiles = m_blocks * groups;  // <= kWarps * kWarpTiles (static_assert above)
    int chunk_bytes = kChunkBytes * 8;
    while (chunk_bytes > kChunkBytes && np * (chunk_bytes + kRowPad) > kBBufferBytes) chunk_bytes /= 2;
    const int stride = chunk_bytes + kRowPad;  // an odd number of 16-byte units: conflict-free ldmatrix
    float acc[kWarpTiles][4][4];
#pragma unroll
    for (int i = 0; i < kWarpTiles; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;

    // acc += the piece of segment s at K bytes [k, k + length) of every warp tile; b_at(bn): weight row bn of
    // the pass (clamped below np) at K byte k in shared memory.
    auto multiply = [&](int s, int k, int length, auto b_at) {
#pragma unroll
      for (int i = 0; i < kWarpTiles; ++i) {
        const int tile = warp + i * kWarps;
        if (tile >= warp_tiles) break;  // warp-uniform
        const int mb = tile / groups, g = tile % groups;
        // ldmatrix row addresses of this lane: A matrix (lane / 8) is rows +8 * (lane / 8 % 2), K +16 B * (lane / 16);
        // B matrix (lane / 8) is weight rows +8 * (lane / 16), K +16 B * (lane / 8 % 2).
        const int am = min(mb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, M - 1);
        const unsigned char* a_ptr = a_row(s, am) + k + (lane >> 4) * 16;
        const unsigned char* b_ptr[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int bn = min(g * 32 + j * 16 + (lane & 7) + (lane >> 4) * 8, np - 1);
          b_ptr[j] = b_at(bn) + ((lane >> 3) & 1) * 16;
        }
        for (int ks = 0; ks < length / 32; ++ks) {
          uint32_t a[4];
          ldmatrix_x4(a, a_ptr + ks * 32);
          to_operand<T>(a);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            uint32_t b[4];
            ldmatrix_x4(b, b_ptr[j] + ks * 32);
            to_operand<T>(b);
            Mma<T>::run(acc[i][2 * j], a, b[0], b[1]);
            Mma<T>::run(acc[i][2 * j + 1], a, b[2], b[3]);
          }
        }
      }
    };
    if (resident) {
      for (int s = 0; s < segments; ++s) {
        multiply(s, 0, seg_bytes(s), [&](int bn) { return b_smem(s, p0 + bn); });
      }
    } else {
      // kStages-deep pipeline: chunks c + 1 .. c + kStages - 1 are in flight while chunk c is multiplied.
      KCursor load_at{0, 0};  // the next chunk to load
      auto load_next = [&](int buf) {  // one cp.async group per call (empty past the last chunk)
        unsigned char* dst = wbuf + buf * kBBufferBytes;
        load_at = walk_chunk(load_at, segments, chunk_bytes, seg_bytes, [&](int s, int k, int offset, int length) {
          const int pieces = length / 16;
          for (int e = threadIdx.x; e < np * pieces; e += kThreads) {
            const int r = e / pieces, q = e % pieces;
            cp_async16(dst + r * stride + offset + q * 16,
                       reinterpret_cast<const unsigned char*>(b_row(s, n_begin + p0 + r)) + k + q * 16);
          }
        });
        cp_async_commit();
      };
#pragma unroll
      for (int st = 0; st < kStages - 1; ++st) load_next(st);
      int buf = 0;  // buffer of the chunk at `at`
      for (KCursor at{0, 0}; at.s < segments; buf = (buf + 1) % kStages) {
        cp_async_wait<kStages - 2>();  // this thread's copies of the chunk at `at` have landed
        __syncthreads();  // ... and every thread's; every warp is done with the previous chunk's buffer
        load_next((buf + kStages - 1) % kStages);  // into the buffer the previous iteration read
        const unsigned char* wb = wbuf + buf * kBBufferBytes;
        at = walk_chunk(at, segments, chunk_bytes, seg_bytes, [&](int s, int k, int offset, int length) {
          multiply(s, k, length, [&](int bn) { return wb + bn * stride + offset; });
        });
      }
    }
    cp_async_wait<0>();  // only empty groups can be pending here
    __syncthreads();     // the next pass or GEMM refills the buffers
    // Accumulator fragment: value v of n8 tile j is row (lane / 4) + 8 (v / 2), column 2 (lane % 4) + v % 2.
#pragma unroll
    for (int i = 0; i < kWarpTiles; ++i) {
      const int tile = warp + i * kWarps;
      if (tile >= warp_tiles) break;
      const int mb = tile / groups, g = tile % groups;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const int m = mb * 16 + lane / 4 + 8 * (v / 2), col = g * 32 + j * 8 + 2 * (lane % 4) + v % 2;
          if (m < M && col < np) epilogue(m, n_begin + p0 + col, acc[i][j][v]);
        }
      }
    }
  }
}

// The same contract as mma_gemm, one thread per output element, weights from global memory.
template <typename T, typename Acc, typename ARow, typename BRow, typename SegBytes, typename Epilogue>
__device__ __forceinline__ void exact_gemm(int M, int n_begin, int n_count, int segments, SegBytes seg_bytes,
                                           ARow a_row, BRow b_row, Epilogue epilogue) {
  for (int e = threadIdx.x; e < M * n_count; e += kThreads) {
    const int m = e / n_count, n = n_begin + e % n_count;
    Acc acc = Acc(0);
    for (int s = 0; s < segments; ++s) {
      const T* a = reinterpret_cast<const T*>(a_row(s, m));
      const T* w = b_row(s, n);
      const int K = seg_bytes(s) / static_cast<int>(sizeof(T));
      for (int c = 0; c < K; ++c) acc += to_acc<Acc>(a[c]) * to_acc<Acc>(w[c]);
    }
    epilogue(m, n, acc);
  }
}

// ---- the kernel ----------------------------------------------------------------------------------

// grid.x = N * tiles_per_image * R, clusters of R consecutive CTAs (one tile); blockDim.x = kThreads.
// Launched as a programmatic dependent launch on sm_90+ (see the launcher): before
// grid_dependency_wait() the kernel at most prefetches its resident weights into L2; it reads
// nothing into registers or shared memory and writes nothing.
template <typename T, bool kMma>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm) residual_block_kernel(
    Params<T> p) {  // pointers (as shg_residual_block_args in launchers.h), sizes and the chosen tiling
  using Acc = std::conditional_t<kMma, float, acc_t<T>>;
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int elem = sizeof(T);
  const int S = p.S, halo_w = S + 2, halo = halo_w * halo_w, tile_px = S * S;
  const bool resident = kMma && p.resident;
  const SmemLayout layout = smem_layout(S, p.Cin, p.Cmid, p.Cout, elem, kMma, p.ws != nullptr, p.R, resident);
  unsigned char* a1 = smem + layout.a1_h2;  // stage A output, dead after stage B
  unsigned char* h2 = a1;                    // stage C output
  unsigned char* h1 = smem + layout.h1;
  unsigned char* xs = smem + layout.xs;
  unsigned char* wbuf = smem + layout.wbuf;
  const int a1_stride = row_bytes(p.Cin, elem), mid_stride = row_bytes(p.Cmid, elem);

  const int rank = cluster_rank();
  const int64_t n = (blockIdx.x / p.R) / p.tiles_per_image;
  const int tile = (blockIdx.x / p.R) % p.tiles_per_image;
  const int y0 = tile / p.tiles_w * S, x0 = tile % p.tiles_w * S;  // first output pixel of the tile
  auto inside = [&](int gy, int gx) { return gy >= 0 && gy < p.H && gx >= 0 && gx < p.W; };
  auto elem_at = [](unsigned char* buf, int stride, int row, int col) {
    return reinterpret_cast<T*>(buf + static_cast<size_t>(row) * stride) + col;
  };
  const int mid_slice = p.Cmid / p.R, out_slice = p.Cout / p.R;

  // The three GEMMs' weights: segments, K bytes per segment, global rows (b_*) and, resident, shared rows of the
  // slice (r_*: row j of the slice; rows padded like the activations, so ldmatrix reads are conflict-free).
  auto in_bytes = [&](int) { return p.Cin * elem; };
  auto mid_bytes = [&](int) { return p.Cmid * elem; };
  auto d_bytes = [&](int s) { return (s == 0 ? p.Cmid : p.Cin) * elem; };
  auto b_w1 = [&](int, int j) { return p.w1 + static_cast<int64_t>(j) * p.Cin; };
  auto b_w2 = [&](int s, int j) { return p.w2 + (static_cast<int64_t>(s) * p.Cmid + j) * p.Cmid; };
  auto b_d = [&](int s, int co) {
    return s == 0 ? p.w3 + static_cast<int64_t>(co) * p.Cmid : p.ws + static_cast<int64_t>(co) * p.Cin;
  };
  auto r_w1 = [&](int, int j) { return static_cast<const unsigned char*>(wbuf) + static_cast<size_t>(j) * a1_stride; };
  auto r_w2 = [&](int s, int j) {
    return static_cast<const unsigned char*>(smem + layout.w2) + static_cast<size_t>(s * mid_slice + j) * mid_stride;
  };
  auto r_d = [&](int s, int j) {
    return s == 0 ? static_cast<const unsigned char*>(smem + layout.w3) + static_cast<size_t>(j) * mid_stride
                  : static_cast<const unsigned char*>(smem + layout.ws) + static_cast<size_t>(j) * a1_stride;
  };
  const int d_segments = p.ws != nullptr ? 2 : 1;

  // The CTA's weight share as regions of rows (w1, w2's 9 taps, w3, ws): visit(rows, bytes per row, global row r,
  // shared row r). Every loop below spreads a region's rows or 16-byte pieces over the threads.
  auto each_share_region = [&](auto visit) {
    visit(mid_slice, in_bytes(0), [&](int r) { return b_w1(0, rank * mid_slice + r); },
          [&](int r) { return r_w1(0, r); });
    visit(9 * mid_slice, mid_bytes(0), [&](int r) { return b_w2(r / mid_slice, rank * mid_slice + r % mid_slice); },
          [&](int r) { return r_w2(r / mid_slice, r % mid_slice); });
    for (int s = 0; s < d_segments; ++s) {
      visit(out_slice, d_bytes(s), [&](int r) { return b_d(s, rank * out_slice + r); },
            [&](int r) { return r_d(s, r); });
    }
  };
  // Before the wait, only an L2 prefetch of a resident weight share: L2 is where every SM's writes become
  // coherent, so a prefetch can bring in no stale data even if the previous kernel wrote the weights; the copies
  // to shared memory wait (the previous kernel's writes may still be in flight when this grid starts). Streamed
  // shares are not prefetched: their launches run many CTAs per weight row (large maps or batches), whose
  // prefetches would repeat each row's L2 requests.
  if (resident) {
    each_share_region([&](int rows, int bytes, auto src, auto) {
      for (int r = threadIdx.x; r < rows; r += kThreads) prefetch_l2(src(r), bytes);
    });
  }
  grid_dependency_wait();     // the previous kernels' writes (x, upsample, weights) are visible; out may be written
  allow_dependents_launch();  // the next kernel's CTAs may start (and prefetch) while this grid computes

  // Resident weights: the whole share requested into shared memory at once, one cp.async group, so the CTA waits
  // one L2 round trip for all three GEMMs' weights and x together instead of a chain of chunks.
  if (resident) {
    each_share_region([&](int rows, int bytes, auto src, auto dst) {
      const int pieces = bytes / 16;
      for (int e = threadIdx.x; e < rows * pieces; e += kThreads) {
        const int r = e / pieces, q = e % pieces;
        cp_async16(const_cast<unsigned char*>(dst(r)) + q * 16,
                   reinterpret_cast<const unsigned char*>(src(r)) + q * 16);
      }
    });
    cp_async_commit();
  }

  // Stage A: a1 = relu(xin * in_scale + in_shift) on the halo, 0 outside the image; xin of the tile (projection).
  if (kMma && !p.pool) {
    // The raw x rows arrive by cp.async, 16 bytes per copy, all in flight at once (zeros outside the
    // image); then a1 is transformed in place.
    const int pieces = p.Cin * elem / 16;
    auto copy_rows = [&](unsigned char* dst, int rows, int window_w, int oy, int ox) {  // window at (oy, ox)
      for (int e = threadIdx.x; e < rows * pieces; e += kThreads) {
        const int r = e / pieces, q = e % pieces;
        const int gy = oy + r / window_w, gx = ox + r % window_w;
        unsigned char* dst_piece = dst + static_cast<size_t>(r) * a1_stride + q * 16;
        if (inside(gy, gx)) {
          cp_async16(dst_piece, reinterpret_cast<const unsigned char*>(p.x + ((n * p.H + gy) * p.W + gx) * p.Cin) + q * 16);
        } else {
          *reinterpret_cast<uint4*>(dst_piece) = make_uint4(0, 0, 0, 0);
        }
      }
    };
    copy_rows(a1, halo, halo_w, y0 - 1, x0 - 1);
    if (p.ws != nullptr) copy_rows(xs, tile_px, S, y0, x0);
    cp_async_commit();
    cp_async_wait<0>();  // x and, resident, the weights
    __syncthreads();
    for (int e = threadIdx.x; e < halo * p.Cin; e += kThreads) {
      const int h = e / p.Cin, c = e % p.Cin;
      if (!inside(y0 - 1 + h / halo_w, x0 - 1 + h % halo_w)) continue;  // stays 0
      T* v = elem_at(a1, a1_stride, h, c);
      *v = from_acc<T, Acc>(relu(to_acc<Acc>(*v) * to_acc<Acc>(p.in_scale[c]) + to_acc<Acc>(p.in_shift[c])));
    }
  } else {
#pragma unroll 4
    for (int e = threadIdx.x; e < halo * p.Cin; e += kThreads) {
      const int h = e / p.Cin, c = e % p.Cin;
      const int gy = y0 - 1 + h / halo_w, gx = x0 - 1 + h % halo_w;
      Acc v = Acc(0);
      if (inside(gy, gx)) v = relu(load_xin<T, Acc>(p, n, gy, gx, c) * to_acc<Acc>(p.in_scale[c]) + to_acc<Acc>(p.in_shift[c]));
      *elem_at(a1, a1_stride, h, c) = from_acc<T, Acc>(v);
    }
    if (p.ws != nullptr) {
#pragma unroll 4
      for (int e = threadIdx.x; e < tile_px * p.Cin; e += kThreads) {
        const int t = e / p.Cin, c = e % p.Cin;
        const int gy = y0 + t / S, gx = x0 + t % S;
        *elem_at(xs, a1_stride, t, c) = from_acc<T, Acc>(inside(gy, gx) ? load_xin<T, Acc>(p, n, gy, gx, c) : Acc(0));
      }
    }
    if (resident) cp_async_wait<0>();  // the weights
  }
  __syncthreads();

  auto gemm = [&](int M, int n_begin, int n_count, int segments, auto seg_bytes, auto a_row, auto b_row, auto b_smem,
                  auto epilogue) {
    if constexpr (kMma) {
      mma_gemm<T>(wbuf, resident, M, n_begin, n_count, segments, seg_bytes, a_row, b_row, b_smem, epilogue);
    } else {
      exact_gemm<T, Acc>(M, n_begin, n_count, segments, seg_bytes, a_row, b_row, epilogue);
    }
  };

  // Stage B: h1 = relu(a1 . w1^T + b1) on the halo, channels of this CTA's slice; 0 outside the image.
  gemm(
      halo, rank * mid_slice, mid_slice, 1, in_bytes,
      [&](int, int m) { return static_cast<const unsigned char*>(a1) + static_cast<size_t>(m) * a1_stride; }, b_w1,
      r_w1,
      [&](int h, int j, Acc acc) {
        const bool keep = inside(y0 - 1 + h / halo_w, x0 - 1 + h % halo_w);
        *elem_at(h1, mid_stride, h, j) = from_acc<T, Acc>(keep ? relu(acc + to_acc<Acc>(p.b1[j])) : Acc(0));
      });
  if (p.R > 1) {
    cluster_barrier();
    gather_slices(h1, halo, mid_stride, mid_slice * elem, p.R, rank);
  }
  __syncthreads();

  // Stage C: h2 = relu(conv3x3(h1) + b2); output pixel t = (ty, tx) reads halo pixel (ty + dy, tx + dx) at tap
  // s = 3 dy + dx. h2 overwrites a1, whose last reader was stage B (the other CTAs never read a1).
  gemm(
      tile_px, rank * mid_slice, mid_slice, 9, mid_bytes,
      [&](int s, int t) {
        const int h = (t / S + s / 3) * halo_w + t % S + s % 3;
        return static_cast<const unsigned char*>(h1) + static_cast<size_t>(h) * mid_stride;
      },
      b_w2, r_w2,
      [&](int t, int j, Acc acc) { *elem_at(h2, mid_stride, t, j) = from_acc<T, Acc>(relu(acc + to_acc<Acc>(p.b2[j]))); });
  if (p.R > 1) {
    cluster_barrier();
    gather_slices(h2, tile_px, mid_stride, mid_slice * elem, p.R, rank);
  }
  __syncthreads();

  // Stage D: out = h2 . w3^T (segment 0) + xin . ws^T (segment 1, projection) + biases + identity + upsample.
  const int Hl = (p.H + 1) / 2, Wl = (p.W + 1) / 2;
  gemm(
      tile_px, rank * out_slice, out_slice, d_segments, d_bytes,
      [&](int s, int t) {
        return s == 0 ? static_cast<const unsigned char*>(h2) + static_cast<size_t>(t) * mid_stride
                      : static_cast<const unsigned char*>(xs) + static_cast<size_t>(t) * a1_stride;
      },
      b_d, r_d,
      [&](int t, int co, Acc acc) {
        const int gy = y0 + t / S, gx = x0 + t % S;
        if (!inside(gy, gx)) return;
        acc += to_acc<Acc>(p.b3[co]);
        acc += p.ws != nullptr ? to_acc<Acc>(p.bs[co]) : load_xin<T, Acc>(p, n, gy, gx, co);
        if (p.upsample != nullptr) acc += to_acc<Acc>(p.upsample[((n * Hl + gy / 2) * Wl + gx / 2) * p.Cout + co]);
        p.out[((n * p.H + gy) * p.W + gx) * p.Cout + co] = from_acc<T, Acc>(acc);
      });
  if (p.R > 1) cluster_barrier();  // the other CTAs may still read this CTA's h2 slice
}

// ---- host side -------------------------------------------------------------------------------------

int element_size(shg_dtype dtype) { return dtype == SHG_FLOAT64 ? 8 : (dtype == SHG_FLOAT32 ? 4 : 2); }

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The tensor-core path: fp16/bf16, or fp32 with TF32 allowed; every channel count a multiple of
// 16 (K rows of whole 32-byte k-steps, n8 slices); x and the weights 16-byte aligned (cp.async).
bool use_mma(const shg_residual_block_args& a, shg_dtype dtype) {
  const bool type_ok = dtype == SHG_FLOAT16 || dtype == SHG_BFLOAT16 || (dtype == SHG_FLOAT32 && a.allow_tf32);
  return type_ok && a.Cin % 16 == 0 && a.Cmid % 16 == 0 && a.Cout % 16 == 0 && aligned16(a.x) && aligned16(a.w1) &&
         aligned16(a.w2) && aligned16(a.w3) && (a.ws == nullptr || aligned16(a.ws));
}

// Dynamic shared memory of one CTA: tile S, cluster R, weights resident or streamed.
size_t smem_bytes(const shg_residual_block_args& a, shg_dtype dtype, int S, int R = 1, bool resident = false) {
  return smem_layout(S, a.Cin, a.Cmid, a.Cout, element_size(dtype), use_mma(a, dtype), a.ws != nullptr, R, resident)
      .total;
}

// The tiling of one launch: tile size S, cluster size R.
struct Tiling {
  int S, R;
  int64_t tiles_w, tiles_per_image;
};

// Largest tile S <= max(H, W) (or the smallest, S = 2) whose shared memory fits and whose tiles
// times R reach 90% of the SMs, where R in {1, 2, 4, 8} is the smallest that reaches 90% of the
// resident CTA slots (SMs x 2 when two CTAs fit one SM's shared memory), or 8. R keeps Cmid / R
// and Cout / R multiples of 8 (tensor-core path on sm_90+ only; the exact path keeps R = 1). A
// larger R shortens each CTA's weight stream (1/R of every weight), which bounds small maps at
// batch 1, so R grows before S shrinks.
Tiling choose_tiling(const shg_residual_block_args& a, shg_dtype dtype, int sms, int smem_limit, bool clusters) {
  const bool mma = use_mma(a, dtype);
  Tiling best{0, 1, 0, 0};
  for (int S : kTiles) {
    const bool last = S == kTiles[sizeof(kTiles) / sizeof(kTiles[0]) - 1];
    const size_t smem = smem_bytes(a, dtype, S);
    if (smem > static_cast<size_t>(smem_limit)) continue;
    if (!last && S > (a.H > a.W ? a.H : a.W)) continue;  // a smaller tile covers the map
    const int64_t slots = static_cast<int64_t>(sms) * (2 * (smem + 1024) <= static_cast<size_t>(smem_limit) + 1024 ? 2 : 1);
    const int64_t tiles_w = (a.W + S - 1) / S, tiles = a.N * ((a.H + S - 1) / S) * tiles_w;
    int R = 1;
    while (mma && clusters && R < kMaxCluster && tiles * R * 10 < slots * 9 && a.Cmid % (16 * R) == 0 &&
           a.Cout % (16 * R) == 0) {
      R *= 2;
    }
    best = Tiling{S, R, tiles_w, (a.H + S - 1) / S * tiles_w};
    if (tiles * R * 10 >= static_cast<int64_t>(sms) * 9) break;
  }
  return best;
}

// What a launch does: its tiling, whether the CTAs hold their whole weight share in shared memory, and the
// dynamic shared memory per CTA. Resident weights (tensor-core path) when they fit the opt-in limit and the
// grid still runs in one wave (every CTA resident at once: CTAs <= SMs x CTAs per SM by shared memory, at most
// 2 by registers), so holding them never adds a wave; otherwise the kStages chunk buffers stream them.
struct LaunchPlan {
  Tiling tiling;
  bool resident;
  size_t smem;
};

LaunchPlan plan_launch(const shg_residual_block_args& a, shg_dtype dtype, int sms, int smem_limit, bool clusters) {
  const Tiling tiling = choose_tiling(a, dtype, sms, smem_limit, clusters);
  LaunchPlan plan{tiling, false, 0};
  if (tiling.S == 0) return plan;
  plan.smem = smem_bytes(a, dtype, tiling.S, tiling.R, false);
  if (use_mma(a, dtype)) {
    const size_t held = smem_bytes(a, dtype, tiling.S, tiling.R, true);
    const int64_t per_sm = 2 * (held + 1024) <= static_cast<size_t>(smem_limit) + 1024 ? 2 : 1;
    if (held <= static_cast<size_t>(smem_limit) && a.N * tiling.tiles_per_image * tiling.R <= sms * per_sm) {
      plan.resident = true;
      plan.smem = held;
    }
  }
  return plan;
}

// Launched with programmatic stream serialization on sm_90+ (`pdl`): the grid may start while the previous
// kernel on the stream runs; CTAs with resident weights prefetch them into L2, then griddepcontrol.wait holds
// every thread until that kernel has completed and its writes are visible, before the first read of x,
// upsample or any weight and before any write. The previous kernel's CTAs that call
// griddepcontrol.launch_dependents let this grid start early; one that never does (any non-PDL kernel) lets it
// start when it exits. The same attribute becomes a programmatic edge when a CUDA graph captures the stream
// (CUDA 12.3+), with the same wait.
template <typename T, bool kMma>
cudaError_t launch(const Params<T>& p, unsigned blocks, size_t smem, bool pdl, cudaStream_t stream) {
  auto kernel = residual_block_kernel<T, kMma>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned count = 0;
  if (p.R > 1) {
    attrs[count].id = cudaLaunchAttributeClusterDimension;
    attrs[count].val.clusterDim.x = static_cast<unsigned>(p.R);
    attrs[count].val.clusterDim.y = 1;
    attrs[count].val.clusterDim.z = 1;
    ++count;
  }
  if (pdl) {
    attrs[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  config.attrs = attrs;
  config.numAttrs = count;
  err = cudaLaunchKernelEx(&config, kernel, p);
  return err != cudaSuccess ? err : cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const shg_residual_block_args& a, shg_dtype dtype, const LaunchPlan& plan, bool pdl,
                         cudaStream_t stream) {
  const Tiling& tiling = plan.tiling;
  Params<T> p{static_cast<const T*>(a.x),  static_cast<const T*>(a.in_scale), static_cast<const T*>(a.in_shift),
              static_cast<const T*>(a.w1), static_cast<const T*>(a.b1),       static_cast<const T*>(a.w2),
              static_cast<const T*>(a.b2), static_cast<const T*>(a.w3),       static_cast<const T*>(a.b3),
              static_cast<const T*>(a.ws), static_cast<const T*>(a.bs),       static_cast<const T*>(a.upsample),
              static_cast<T*>(a.out)};
  p.H = static_cast<int>(a.H);
  p.W = static_cast<int>(a.W);
  p.in_H = static_cast<int>(a.in_H);
  p.in_W = static_cast<int>(a.in_W);
  p.pool = a.pool_input ? 1 : 0;
  p.Cin = static_cast<int>(a.Cin);
  p.Cmid = static_cast<int>(a.Cmid);
  p.Cout = static_cast<int>(a.Cout);
  p.S = tiling.S;
  p.R = tiling.R;
  p.resident = plan.resident ? 1 : 0;
  p.tiles_w = static_cast<int>(tiling.tiles_w);
  p.tiles_per_image = static_cast<int>(tiling.tiles_per_image);
  const unsigned blocks = static_cast<unsigned>(a.N * tiling.tiles_per_image * tiling.R);
  if constexpr (std::is_same_v<T, double>) {
    return launch<T, false>(p, blocks, plan.smem, pdl, stream);
  } else {
    return use_mma(a, dtype) ? launch<T, true>(p, blocks, plan.smem, pdl, stream)
                             : launch<T, false>(p, blocks, plan.smem, pdl, stream);
  }
}

}  // namespace
}  // namespace shg_fast::cuda

// The smallest tile's shared memory: the least the kernel needs to run (the launcher takes a
// larger tile when it fits the device and the map).
extern "C" size_t shg_residual_block_smem_bytes(const shg_residual_block_args* args, shg_dtype dtype) {
  using namespace shg_fast::cuda;
  return smem_bytes(*args, dtype, kTiles[sizeof(kTiles) / sizeof(kTiles[0]) - 1]);
}

extern "C" void shg_residual_block_tiling(const shg_residual_block_args* args, shg_dtype dtype, int sms,
                                          int smem_limit, int clusters, int* tile, int* cluster) {
  const shg_fast::cuda::Tiling tiling = shg_fast::cuda::choose_tiling(*args, dtype, sms, smem_limit, clusters != 0);
  *tile = tiling.S;
  *cluster = tiling.R;
}

extern "C" size_t shg_residual_block_launch_smem(const shg_residual_block_args* args, shg_dtype dtype, int sms,
                                                 int smem_limit, int clusters, int* resident) {
  const shg_fast::cuda::LaunchPlan plan = shg_fast::cuda::plan_launch(*args, dtype, sms, smem_limit, clusters != 0);
  *resident = plan.resident ? 1 : 0;
  return plan.smem;
}

extern "C" cudaError_t shg_residual_block(const shg_residual_block_args* args, shg_dtype dtype,
                                          cudaStream_t stream) {
  using namespace shg_fast::cuda;
  shg_residual_block_args a = *args;
  if (a.in_H == 0 && a.in_W == 0 && !a.pool_input) {  // a caller that predates in_H, in_W
    a.in_H = a.H;
    a.in_W = a.W;
  }
  const int64_t pooled_H = a.pool_input ? a.in_H / 2 : a.in_H, pooled_W = a.pool_input ? a.in_W / 2 : a.in_W;
  const bool sizes_ok = a.N >= 0 && a.H >= 0 && a.W >= 0 && a.Cin > 0 && a.Cmid > 0 && a.Cout > 0 &&
                        pooled_H == a.H && pooled_W == a.W && a.in_H <= kInt32Max && a.in_W <= kInt32Max &&
                        a.Cin <= kInt32Max && a.Cmid <= kInt32Max && a.Cout <= kInt32Max;
  if (!sizes_ok || (a.ws == nullptr) != (a.bs == nullptr) || (a.ws == nullptr && a.Cin != a.Cout)) {
    return cudaErrorInvalidValue;
  }
  if (a.N * a.H * a.W == 0) return cudaSuccess;
  int device = 0, smem_limit = 0, sms = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  const LaunchPlan plan = plan_launch(a, dtype, sms, smem_limit, major >= 9);
  if (plan.tiling.S == 0 || a.N * plan.tiling.tiles_per_image * plan.tiling.R > kInt32Max) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype,
                        [&](auto tag) { return launch_typed<decltype(tag)>(a, dtype, plan, major >= 9, stream); });
}
