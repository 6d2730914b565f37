"""The extension's ``shg_fast::residual_block`` as the ``cpu`` and ``cuda`` backends of
:func:`shg_fast.ops.residual_block`.

``cpu`` runs ATen convolutions on the folded weights (csrc/cpu/residual_block.cpp); ``cuda``
runs the whole block in one kernel launch (csrc/cuda/residual_block.cu): NHWC inside, so a
channels_last ``x`` avoids two layout copies. Inference only (no autograd). Importing this
module never touches the GPU, and without the extension it registers nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .. import _extension
from ..folding import FoldedResidual
from .conv_bn_relu import SUPPORTED_DTYPES
from .residual_block import RESIDUAL_BLOCK, block_size

__all__ = ["residual_block_extension", "cuda_smem_bytes", "prepack_for_cuda", "uses_tensor_cores", "cuda_tiling",
           "block_smem_bytes", "block_tiling", "block_launch_smem", "cuda_launch_smem", "TILE_SIZES"]

# Mirrors of the constants of csrc/cuda/residual_block.cu (tests/ops/test_cuda_ops.py checks them against
# shg_residual_block_smem_bytes): output tiles S x S, activation rows padded by 16 bytes, three weight
# chunk buffers of 64 rows x (128 + 16) bytes on the tensor-core path.
TILE_SIZES = (8, 4, 2)
_ROW_PAD = 16
_WEIGHT_BUFFERS = 3 * 64 * (128 + 16)


def _align128(nbytes: int) -> int:
    return (nbytes + 127) // 128 * 128


def uses_tensor_cores(dtype: torch.dtype, block: FoldedResidual, allow_tf32: bool | None = None) -> bool:
    """Whether the CUDA kernel takes its tensor-core path (ldmatrix + mma.sync) for this block.

    fp16/bf16, or float32 with TF32 allowed (``torch.backends.cuda.matmul.allow_tf32`` unless
    given); every channel count a multiple of 16 (the C++ side also needs x and the weights
    16-byte aligned, which fresh tensors are).
    """
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32) if allow_tf32 is None else allow_tf32
    type_ok = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32)
    return type_ok and all(c % 16 == 0 for c in (block.in_channels, block.mid_channels, block.out_channels))


def block_smem_bytes(elem: int, mma: bool, cin: int, mid: int, projection: bool, tile: int, *, cout: int = 0,
                     cluster: int = 1, resident: bool = False) -> int:
    """Shared memory of one CTA (``smem_layout`` in residual_block.cu): element size, path, channels, tile;
    with ``resident`` (tensor-core path) the CTA's whole weight share (1/``cluster`` of every GEMM's output
    channels, ``cout`` output channels) instead of the streaming buffers."""
    halo, pixels = (tile + 2) ** 2, tile * tile
    in_row, mid_row = cin * elem + _ROW_PAD, mid * elem + _ROW_PAD
    total = _align128(max(halo * in_row, pixels * mid_row)) + _align128(halo * mid_row)
    if projection:
        total += _align128(pixels * in_row)
    if not mma:
        return total
    if not resident:
        return total + _WEIGHT_BUFFERS
    mid_slice, out_slice = mid // cluster, cout // cluster
    total += _align128(mid_slice * in_row) + _align128(9 * mid_slice * mid_row) + _align128(out_slice * mid_row)
    return total + (_align128(out_slice * in_row) if projection else 0)


def block_tiling(elem: int, mma: bool, cin: int, mid: int, cout: int, projection: bool, batch: int, height: int,
                 width: int, sms: int, smem_limit: int, clusters: bool) -> tuple[int, int]:
    """``(S, R)`` of ``choose_tiling`` in residual_block.cu; see :func:`cuda_tiling`."""
    best = (0, 1)
    for tile in TILE_SIZES:
        smem = block_smem_bytes(elem, mma, cin, mid, projection, tile)
        if smem > smem_limit:
            continue
        if tile != TILE_SIZES[-1] and tile > max(height, width):
            continue
        slots = sms * (2 if 2 * (smem + 1024) <= smem_limit + 1024 else 1)
        tiles = batch * -(-height // tile) * -(-width // tile)
        r = 1
        while mma and clusters and r < 8 and tiles * r * 10 < slots * 9 and mid % (16 * r) == 0 and cout % (16 * r) == 0:
            r *= 2
        best = (tile, r)
        if tiles * r * 10 >= sms * 9:
            break
    return best


def block_launch_smem(elem: int, mma: bool, cin: int, mid: int, cout: int, projection: bool, batch: int, height: int,
                      width: int, sms: int, smem_limit: int, clusters: bool) -> tuple[int, bool]:
    """``(shared memory per CTA, resident weights)`` of the launch (``plan_launch`` in residual_block.cu).

    The weights are resident (each CTA loads its whole share once, at its start) on the tensor-core
    path when that layout fits ``smem_limit`` and every CTA of the grid is resident at once (CTAs <=
    ``sms`` x 2 when two such CTAs fit one SM's shared memory, else x 1); otherwise streamed.
    """
    tile, cluster = block_tiling(elem, mma, cin, mid, cout, projection, batch, height, width, sms, smem_limit, clusters)
    if tile == 0:
        return 0, False
    streamed = block_smem_bytes(elem, mma, cin, mid, projection, tile)
    if not mma:
        return streamed, False
    held = block_smem_bytes(elem, mma, cin, mid, projection, tile, cout=cout, cluster=cluster, resident=True)
    per_sm = 2 if 2 * (held + 1024) <= smem_limit + 1024 else 1
    ctas = batch * -(-height // tile) * -(-width // tile) * cluster
    if held <= smem_limit and ctas <= sms * per_sm:
        return held, True
    return streamed, False


def cuda_smem_bytes(x: torch.Tensor, block: FoldedResidual, tile: int = TILE_SIZES[-1],
                    allow_tf32: bool | None = None) -> int:
    """Shared memory (bytes) of one CTA of the CUDA kernel with ``tile x tile`` output tiles.

    The default, the smallest tile, is what ``shg_residual_block_smem_bytes`` reports: the least
    the kernel needs to run (its launcher takes a larger tile when that fits the device).
    """
    return block_smem_bytes(x.element_size(), uses_tensor_cores(x.dtype, block, allow_tf32), block.in_channels,
                            block.mid_channels, block.ws is not None, tile)


def cuda_tiling(dtype: torch.dtype, block: FoldedResidual, batch: int, height: int, width: int, sms: int,
                smem_limit: int, clusters: bool = True, allow_tf32: bool | None = None) -> tuple[int, int]:
    """``(S, R)``: the tile size and cluster size the CUDA launcher picks (``shg_residual_block_tiling``).

    The largest tile ``S`` of :data:`TILE_SIZES` not above ``max(height, width)`` (the smallest
    always qualifies) whose shared memory fits ``smem_limit`` and whose tile count times ``R``
    reaches 90% of ``sms``, where ``R`` in 1, 2, 4, 8 is the smallest reaching 90% of the CTA
    slots (``sms`` x 2 when two CTAs fit one SM's shared memory, ``smem_limit`` + 1 KB on
    Hopper), or 8; ``R`` keeps ``C_mid / R`` and ``C_out / R`` multiples of 8 and is 1 on the
    exact path or without clusters. ``(0, 1)`` when no tile fits.
    """
    elem = torch.empty(0, dtype=dtype).element_size()
    return block_tiling(elem, uses_tensor_cores(dtype, block, allow_tf32), block.in_channels, block.mid_channels,
                        block.out_channels, block.ws is not None, batch, height, width, sms, smem_limit, clusters)


def cuda_launch_smem(dtype: torch.dtype, block: FoldedResidual, batch: int, height: int, width: int, sms: int,
                     smem_limit: int, clusters: bool = True, allow_tf32: bool | None = None) -> tuple[int, bool]:
    """``(bytes, resident)``: the dynamic shared memory per CTA the CUDA launcher uses and whether each CTA
    holds its whole weight share (``shg_residual_block_launch_smem``; see :func:`block_launch_smem`)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    return block_launch_smem(elem, uses_tensor_cores(dtype, block, allow_tf32), block.in_channels, block.mid_channels,
                             block.out_channels, block.ws is not None, batch, height, width, sms, smem_limit, clusters)


def prepack_for_cuda(block: FoldedResidual) -> FoldedResidual:
    """A copy of ``block`` whose ``w2`` is stored tap-major (``[dy][dx][out][in]``) as the CUDA kernel reads it.

    Same values and shapes, so every backend accepts it; the CUDA backend then skips the per-call
    re-layout copy of ``w2`` (one small extra kernel launch). Call once per block, after ``.to()``.
    """
    w2 = block.w2.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    return dataclasses.replace(block, w2=w2)


def residual_block_extension(x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None = None,
                             pool_input: bool = False) -> torch.Tensor:
    """``torch.ops.shg_fast.residual_block`` on the folded tensors of ``block`` (any device it has a kernel for)."""
    return torch.ops.shg_fast.residual_block(x, block.in_scale, block.in_shift, block.w1, block.b1, block.w2,
                                             block.b2, block.w3, block.b3, block.ws, block.bs, upsample, pool_input)


def _check_cpu(x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None = None,
               pool_input: bool = False) -> list[str]:
    return [] if x.dtype in SUPPORTED_DTYPES else [f"residual_block cpu does not support dtype {x.dtype}"]


@functools.lru_cache(maxsize=None)
def _smem_limit(index: int) -> int:
    """The opt-in shared memory per block of CUDA device ``index`` (queried once per device)."""
    return torch.cuda.get_device_properties(index).shared_memory_per_block_optin


def _check_cuda(x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None = None,
                pool_input: bool = False) -> list[str]:
    reasons = _check_cpu(x, block, upsample)
    if x.dtype == torch.float32 and not uses_tensor_cores(x.dtype, block):  # auto then takes triton
        reasons.append("residual_block cuda runs float32 on tensor cores only as TF32 "
                       "(torch.backends.cuda.matmul.allow_tf32) with channel counts that are multiples of 16; "
                       "its exact float32 loop would be 10-100x slower than eager, so those blocks run on the "
                       "triton convs")
    if not reasons:
        need = cuda_smem_bytes(x, block)
        limit = _smem_limit(x.device.index if x.device.index is not None else torch.cuda.current_device())
        if need > limit:
            reasons.append(f"residual_block cuda needs {need} bytes of shared memory per block for C_in "
                           f"{block.in_channels}, C_mid {block.mid_channels} in {x.dtype}; the device allows {limit}")
    return reasons


def _output_is_channels_last(x: torch.Tensor) -> bool:
    """The op's output layout rule (csrc/checks.h prefers_channels_last)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _register_library_op() -> None:
    @torch.library.register_fake("shg_fast::residual_block")
    def _(x, in_scale, in_shift, w1, b1, w2, b2, w3, b3, ws, bs, upsample, pool_input=False):
        torch._check(x.dim() == 4, lambda: "residual_block needs a 4-D x")
        torch._check(w3.dim() == 4, lambda: "residual_block needs a 4-D w3")
        n = x.shape[0]
        h, w = block_size(x, pool_input)
        fmt = torch.channels_last if _output_is_channels_last(x) else torch.contiguous_format
        return x.new_empty((n, w3.shape[0], h, w)).contiguous(memory_format=fmt)


if _extension.load()[0] is not None:
    _register_library_op()
    RESIDUAL_BLOCK.register("cpu", residual_block_extension, _check_cpu)
    RESIDUAL_BLOCK.register("cuda", residual_block_extension, _check_cuda)
