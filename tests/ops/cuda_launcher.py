"""ctypes access to the C launchers of csrc/cuda/launchers.h inside the built extension.

Tests use it to call ``shg_residual_block`` with arguments the registered op does not pass
yet (``pool_input``, ``allow_tf32``) and to compare the Python mirrors of the kernel's
constants with ``shg_residual_block_smem_bytes`` / ``shg_residual_block_tiling`` /
``shg_residual_block_launch_smem``.
"""

from __future__ import annotations

import ctypes

import torch

from shg_fast import _extension
from shg_fast.folding import FoldedResidual

DTYPE_TAGS = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


class ResidualBlockArgs(ctypes.Structure):
    """Mirror of ``shg_residual_block_args`` (csrc/cuda/launchers.h), field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("x", "in_scale", "in_shift", "w1", "b1", "w2", "b2", "w3", "b3", "ws", "bs", "upsample")] + [
        ("allow_tf32", ctypes.c_int),
        ("out", ctypes.c_void_p),
        ("N", ctypes.c_int64), ("H", ctypes.c_int64), ("W", ctypes.c_int64),
        ("Cin", ctypes.c_int64), ("Cmid", ctypes.c_int64), ("Cout", ctypes.c_int64),
        ("in_H", ctypes.c_int64), ("in_W", ctypes.c_int64),
        ("pool_input", ctypes.c_int),
        ("_reserve", ctypes.c_char * 64),  # room for fields added after pool_input; left zero
    ]


def library() -> ctypes.CDLL | None:
    """The extension's shared object when it exports the CUDA launchers, else None."""
    module = _extension.load()[0]
    if module is None:
        return None
    lib = ctypes.CDLL(module.__file__)
    if not hasattr(lib, "shg_residual_block_smem_bytes"):
        return None
    lib.shg_residual_block_smem_bytes.restype = ctypes.c_size_t
    lib.shg_residual_block_smem_bytes.argtypes = [ctypes.POINTER(ResidualBlockArgs), ctypes.c_int]
    lib.shg_residual_block_tiling.restype = None
    lib.shg_residual_block_tiling.argtypes = [ctypes.POINTER(ResidualBlockArgs), ctypes.c_int, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                              ctypes.POINTER(ctypes.c_int)]
    lib.shg_residual_block_launch_smem.restype = ctypes.c_size_t
    lib.shg_residual_block_launch_smem.argtypes = [ctypes.POINTER(ResidualBlockArgs), ctypes.c_int, ctypes.c_int,
                                                   ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.shg_residual_block.restype = ctypes.c_int
    lib.shg_residual_block.argtypes = [ctypes.POINTER(ResidualBlockArgs), ctypes.c_int, ctypes.c_void_p]
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def block_args(block: FoldedResidual, n: int, h: int, w: int, *, allow_tf32: bool = False,
               pool_input: bool = False) -> ResidualBlockArgs:
    """Sizes and flags, for the host-side launchers (x, w1, w2, w3, ws, bs set to an aligned dummy address)."""
    args = ResidualBlockArgs()
    dummy = 256
    for name in ("x", "w1", "w2", "w3"):
        setattr(args, name, dummy)
    if block.ws is not None:
        args.ws = args.bs = dummy
    args.allow_tf32 = int(allow_tf32)
    args.N, args.H, args.W = n, h, w
    args.in_H, args.in_W = (2 * h, 2 * w) if pool_input else (h, w)
    args.pool_input = int(pool_input)
    args.Cin, args.Cmid, args.Cout = block.in_channels, block.mid_channels, block.out_channels
    return args


def run_residual_block(lib: ctypes.CDLL, x: torch.Tensor, block: FoldedResidual, upsample: torch.Tensor | None,
                       *, pool_input: bool = False, allow_tf32: bool = False) -> torch.Tensor:
    """``shg_residual_block`` on CUDA tensors: x (N, C, in_H, in_W) -> (N, C_out, H, W), channels_last.

    ``pool_input``: the block runs on the 2x2/stride-2 max-pool of x (H = in_H // 2). The output
    is allocated with torch.empty (poisoned under the ``poison_empty`` fixture).
    """
    n, cin, in_h, in_w = x.shape
    h, w = (in_h // 2, in_w // 2) if pool_input else (in_h, in_w)
    xs = x.contiguous(memory_format=torch.channels_last)
    tensors = dict(
        x=xs, in_scale=block.in_scale.contiguous(), in_shift=block.in_shift.contiguous(),
        w1=block.w1.reshape(block.w1.shape[0], -1).contiguous(), b1=block.b1.contiguous(),
        w2=block.w2.permute(2, 3, 0, 1).contiguous(), b2=block.b2.contiguous(),
        w3=block.w3.reshape(block.w3.shape[0], -1).contiguous(), b3=block.b3.contiguous(),
        ws=None if block.ws is None else block.ws.reshape(block.ws.shape[0], -1).contiguous(),
        bs=None if block.bs is None else block.bs.contiguous(),
        upsample=None if upsample is None else upsample.contiguous(memory_format=torch.channels_last))
    out = torch.empty(n, block.out_channels, h, w, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    args = block_args(block, n, h, w, allow_tf32=allow_tf32, pool_input=pool_input)
    for name, tensor in tensors.items():
        setattr(args, name, _ptr(tensor))
    args.in_H, args.in_W = in_h, in_w
    args.out = out.data_ptr()
    stream = torch.cuda.current_stream(x.device).cuda_stream
    rc = lib.shg_residual_block(ctypes.byref(args), DTYPE_TAGS[x.dtype], stream)
    if rc != 0:
        raise RuntimeError(f"shg_residual_block returned cudaError {rc}")
    torch.cuda.synchronize(x.device)
    return out
