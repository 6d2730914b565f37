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
from ..fusion import FoldedResidual
from .conv_bn_relu import SUPPORTED_DTYPES
from .residual_block import RESIDUAL_BLOCK, block_size

__all__ = ["residual_block_extension", "cuda_smem_bytes", "prepack_for_cuda"]

# Mirrors of the tile constants in csrc/cuda/residual_block.cu (used to predict shared memory).
_HALO_ROWS = 112  # (4 + 2) * (16 + 2) halo pixels, padded to a multiple of 16
_TILE_PIXELS = 64  # 4 x 16 output pixels per block
_STAGE_BYTES = 8 * 16 * 16 * 4  # per-warp fp32 accumulator staging of the tensor-core path


def _align128(nbytes: int) -> int:
    return (nbytes + 127) // 128 * 128


def cuda_smem_bytes(x: torch.Tensor, block: FoldedResidual) -> int:
    """Shared memory (bytes) one thread block of the CUDA kernel needs, as ``shg_residual_block_smem_bytes``.

    Assumes the tensor-core path is taken whenever the dtype is 16-bit and every channel count
    is a multiple of 16 (the C++ side also needs 32-byte aligned weights, which fresh tensors are).
    """
    cin, mid, cout = block.in_channels, block.mid_channels, block.out_channels
    elem = x.element_size()
    tensor_cores = elem == 2 and cin % 16 == 0 and mid % 16 == 0 and cout % 16 == 0
    total = _align128(max(_HALO_ROWS * cin, _TILE_PIXELS * mid) * elem) + _align128(_HALO_ROWS * mid * elem)
    if tensor_cores:
        total += (_align128(_TILE_PIXELS * cin * elem) if block.ws is not None else 0) + _STAGE_BYTES
    return total


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
    if x.dtype == torch.float32:  # auto then takes triton: exact fp32 FMA tiles, or TF32 on tensor cores
        reasons.append("residual_block cuda has no tensor-core path for float32 (its scalar loop would be "
                       "10-100x slower than eager); float32 blocks run on the triton convs")
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
