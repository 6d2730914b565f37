"""The ``triton`` backend: Triton kernels (``shg_fast.kernels``) registered as torch.library ops.

Ops (each a ``torch.library.triton_op`` launching through ``wrap_triton``, with an explicit
fake implementation, so ``torch.compile`` sees into them):

``shg_fast::upsample_add_triton(low, skip)``
    differentiable (backward in PyTorch, the formula of :mod:`.upsample_add`).
``shg_fast::decode_heatmaps_triton(heatmaps, flipped, flip_perm)``
    ``(coords (N,K,2) f32, maxvals (N,K) f32)``.
``shg_fast::conv_bn_relu_triton(x, weight, bias, x2, in_scale, in_shift, residual, upsample,
stride, padding, in_relu, out_relu, allow_tf32, pool_x, pool_x2, pool_residual)``
    the fused conv; ``x2`` is a second input concatenated after ``x`` along channels (no
    prologue on it), which lets a projection skip share the last GEMM of a residual block.
    ``pool_*``: that input is read 2x2/stride-2 max-pooled (it is stored at twice the size),
    so a residual block on a max-pool's output reads the pool's input instead.
    A split-K conv's float32 partial sums live in a workspace kept per (device, stream) and
    grown to the largest size asked for (:func:`clear_workspaces` frees them).

The public ops (:func:`~shg_fast.ops.conv_bn_relu`, :func:`~shg_fast.ops.residual_block`, ...)
reach these through their ``FusedOp`` registrations (``backend="triton"``, or ``auto`` on CUDA
tensors). Float32 convs use exact fp32 products unless ``torch.backends.cuda.matmul.allow_tf32``
is set, then TF32. Importing this module never initialises CUDA; when Triton or the kernels
fail to import, the backend reports why instead of breaking ``import shg_fast``.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple

import torch

from .conv_bn_relu import CONV_BN_RELU
from .decode_heatmaps import DECODE_HEATMAPS, decode_outputs
from .decode_heatmaps import SUPPORTED_DTYPES as DECODE_DTYPES
from .residual_block import RESIDUAL_BLOCK
from .upsample_add import UPSAMPLE_ADD, upsample_add_backward, upsample_add_setup_context

__all__ = ["KERNEL_DTYPES", "IMPORT_ERROR", "clear_workspaces"]

#: Activation/weight dtypes the conv and upsample kernels support (float64 is left to other backends).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_INDEX = 2**31  # kernels index activations with int32 offsets

try:
    import triton
    from torch.library import triton_op, wrap_triton
    from triton.runtime.interpreter import InterpretedFunction

    from shg_fast.kernels.conv_bn_relu import (H200_SMS, REDUCE_BLOCK, conv_bn_relu_kernel, conv_config,
                                               conv_split_k_reduce_kernel)
    from shg_fast.kernels.decode_heatmaps import decode_block_size, decode_heatmaps_kernel
    from shg_fast.kernels.upsample_add import UPSAMPLE_ADD_BLOCK, upsample_add_kernel
except Exception as exc:  # a missing or broken Triton only makes this backend unavailable
    IMPORT_ERROR: str | None = f"Triton kernels failed to import ({type(exc).__name__}: {exc})"
else:
    IMPORT_ERROR = None


def _launcher(kernel):
    """``wrap_triton(kernel)``, or the kernel itself when Triton's interpreter made it an
    ``InterpretedFunction`` (which runs eagerly): torch >= 2.12 does the same inside
    ``wrap_triton``, torch 2.11 raises "wrap_triton only works on functions annotated with
    triton.jit or triton.autotune" instead."""
    if isinstance(kernel, InterpretedFunction):
        return kernel
    return wrap_triton(kernel)


def _patch_interpreter_scalars() -> None:
    """Make Triton's interpreter turn scalar kernel arguments into Python ints under numpy >= 2.4.

    The interpreter holds a scalar as a one-element 1-D array and, up to Triton 3.6, converts it
    with ``int(array)``, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted to
    Python scalars"), so ``for c0 in range(0, C, BLOCK_K)`` with a runtime ``C`` fails. Newer
    Triton converts ``int(array.squeeze())``; this installs the same conversion on older ones.
    Only the interpreter (TRITON_INTERPRET=1, for testing) is affected; compiled kernels are not.
    """
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "_shg_fast_scalars", False):
        return

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._shg_fast_scalars = True
    interpreter._patch_lang_tensor = patched


def _tensor_reasons(op: str, supported, tensors: dict[str, torch.Tensor | None]) -> list[str]:
    """Reasons the kernels cannot take these tensors: dtype outside ``supported``, too many elements."""
    reasons = []
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype not in supported:
            reasons.append(f"triton {op} does not support {name} dtype {t.dtype}")
        if t.numel() >= _MAX_INDEX:
            reasons.append(f"triton {op}: {name} has {t.numel()} elements, more than int32 indexing allows")
    return reasons


def _forward_only_reasons(op: str, tensors) -> list[str]:
    """The fused-conv kernels have no backward: refuse inputs that need gradients."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return [f"triton {op} is forward-only (inference) and an input requires grad"]
    return []


def _check_upsample_add(low, skip) -> list[str]:
    return _tensor_reasons("upsample_add", KERNEL_DTYPES, {"low": low, "skip": skip})


def _check_decode_heatmaps(heatmaps, flipped, flip_perm=()) -> list[str]:
    return _tensor_reasons("decode_heatmaps", DECODE_DTYPES, {"heatmaps": heatmaps, "flipped": flipped})


def _check_conv_bn_relu(x, weight, bias=None, *, padding=None, in_scale=None, in_shift=None,
                        residual=None, upsample=None, **_) -> list[str]:
    others = {"weight": weight, "bias": bias, "in_scale": in_scale, "in_shift": in_shift, "residual": residual,
              "upsample": upsample}
    reasons = _tensor_reasons("conv_bn_relu", KERNEL_DTYPES, {"x": x, **others})
    reasons += [f"triton conv_bn_relu needs {name} in x's dtype {x.dtype}, got {t.dtype}"
                for name, t in others.items() if t is not None and t.dtype != x.dtype]
    if padding is not None and padding < 0:
        reasons.append(f"triton conv_bn_relu needs padding >= 0, got {padding}")
    return reasons + _forward_only_reasons("conv_bn_relu", (x, *others.values()))


def _check_residual_block(x, block, upsample=None, pool_input=False) -> list[str]:
    return _tensor_reasons("residual_block", KERNEL_DTYPES, {"x": x, "upsample": upsample}) + \
        _forward_only_reasons("residual_block", (x, upsample, block.w1, block.w2, block.w3, block.ws))


def _allow_tf32() -> bool:
    """TF32 products for float32 convs, as PyTorch's matmul setting says."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


def _sm_count(device: torch.device) -> int:
    """Multiprocessors the split-K rule fills: the device's, or the H200's for CPU tensors (interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H200_SMS


#: Split-K workspaces: (device, stream id or CPU thread) -> a flat float32 buffer, grown to the largest size asked for.
_WORKSPACES: dict[tuple, torch.Tensor] = {}
#: Most (device, stream) workspaces kept: PyTorch's pooled streams are few; the oldest goes first.
_MAX_WORKSPACES = 16


def clear_workspaces() -> None:
    """Drop the cached split-K workspaces of the Triton conv op (their memory returns to PyTorch's allocator)."""
    _WORKSPACES.clear()


def _workspace(numel: int, device: torch.device) -> torch.Tensor:
    """``numel`` float32 elements of scratch for split-K partial sums, reused between calls.

    Kept per (device, stream): kernels on one stream run in order, so the next call's partials
    are written only after this call's reduce has read them (CPU tensors, in the interpreter:
    per thread, which runs its kernels synchronously). Under ``torch.compile`` tracing and
    during CUDA-graph capture a fresh tensor is allocated instead (a graph owns its memory).
    """
    if torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return torch.empty(numel, dtype=torch.float32, device=device)
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else threading.get_ident()
    key = (device, stream)
    buf = _WORKSPACES.pop(key, None)
    if buf is None or buf.numel() < numel:
        buf = None  # release the smaller one before allocating its successor
        buf = torch.empty(numel, dtype=torch.float32, device=device)
    _WORKSPACES[key] = buf  # most recently used last
    while len(_WORKSPACES) > _MAX_WORKSPACES:
        del _WORKSPACES[next(iter(_WORKSPACES))]
    return buf[:numel]


def _conv_output(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                 pool_x: bool = False) -> torch.Tensor:
    """The uninitialised conv output, in x's memory format (channels_last if x is, else contiguous)."""
    n, _, h, w = x.shape
    if pool_x:
        h, w = h // 2, w // 2
    c_out, _, kh, kw = weight.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, c_out, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)


def _register_ops() -> None:
    """Define the triton ops and register them with the fused ops' ``triton`` backend."""

    @triton_op("shg_fast::upsample_add_triton", mutates_args=())
    def upsample_add_triton(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(skip)
        total = out.numel()
        if total == 0:
            return out
        channels_last = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        _, c, h, w = skip.shape
        _launcher(upsample_add_kernel)[(triton.cdiv(total, UPSAMPLE_ADD_BLOCK),)](
            low, skip, out, total, c, h, w, *low.stride(), *skip.stride(), *out.stride(),
            CHANNELS_LAST=channels_last, BLOCK=UPSAMPLE_ADD_BLOCK)
        return out

    @upsample_add_triton.register_fake
    def _(low, skip):
        torch._check(low.dim() == 4 and skip.dim() == 4, lambda: "upsample_add_triton needs 4-D tensors")
        return torch.empty_like(skip)

    upsample_add_triton.register_autograd(upsample_add_backward, setup_context=upsample_add_setup_context)

    @triton_op("shg_fast::decode_heatmaps_triton", mutates_args=())
    def decode_heatmaps_triton(heatmaps: torch.Tensor, flipped: Optional[torch.Tensor],
                               flip_perm: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        coords, maxvals = decode_outputs(heatmaps)
        n, k, h, w = heatmaps.shape
        if n * k == 0:
            return coords, maxvals
        has_flip = flipped is not None
        if has_flip and len(flip_perm):
            perm = torch.tensor(flip_perm, dtype=torch.int32, device=heatmaps.device)
        else:
            perm = torch.arange(k, dtype=torch.int32, device=heatmaps.device)
        fl = flipped if has_flip else heatmaps
        flat = heatmaps.stride(3) == 1 and heatmaps.stride(2) == w
        _launcher(decode_heatmaps_kernel)[(n * k,)](
            heatmaps, fl, perm, coords, maxvals, k, h, w, *heatmaps.stride(), *fl.stride(),
            HAS_FLIP=has_flip, FLAT=flat, BLOCK=decode_block_size(h, w))
        return coords, maxvals

    @decode_heatmaps_triton.register_fake
    def _(heatmaps, flipped, flip_perm):
        torch._check(heatmaps.dim() == 4, lambda: "decode_heatmaps_triton needs a 4-D tensor")
        return decode_outputs(heatmaps)

    @triton_op("shg_fast::conv_bn_relu_triton", mutates_args=())
    def conv_bn_relu_triton(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], x2: Optional[torch.Tensor],
        in_scale: Optional[torch.Tensor], in_shift: Optional[torch.Tensor],
        residual: Optional[torch.Tensor], upsample: Optional[torch.Tensor],
        stride: int, padding: int, in_relu: bool, out_relu: bool, allow_tf32: bool,
        pool_x: bool = False, pool_x2: bool = False, pool_residual: bool = False,
    ) -> torch.Tensor:
        out = _conv_output(x, weight, stride, padding, pool_x)
        if out.numel() == 0:
            return out
        n, c1, h, w = x.shape
        if pool_x:  # the conv's input is x's 2x2 max-pool, read as it loads
            h, w = h // 2, w // 2
        c_out, _, kh, kw = weight.shape
        oh, ow = out.shape[-2:]
        c2 = 0 if x2 is None else x2.shape[1]
        m = n * oh * ow
        cfg = conv_config(m, c1, c2, c_out, kh, kw, x.element_size(), allow_tf32, _sm_count(x.device),
                          pool_x or pool_x2)
        split = cfg["SPLIT_K"]
        grid = (triton.cdiv(c_out, cfg["BLOCK_N"]) * triton.cdiv(m, cfg["BLOCK_M"]), split)
        # Absent optional tensors are never read (their HAS_* flag is off): pass x in their place.
        x2_, bias_, scale_, shift_, res_, up_ = (x if t is None else t for t in
                                                 (x2, bias, in_scale, in_shift, residual, upsample))
        part = _workspace(split * m * c_out, x.device) if split > 1 else out
        flags = dict(HAS_BIAS=bias is not None, OUT_RELU=out_relu, HAS_RESIDUAL=residual is not None,
                     HAS_UPSAMPLE=upsample is not None, POOL_RES=pool_residual)
        _launcher(conv_bn_relu_kernel)[grid](
            x, x2_, weight, bias_, scale_, shift_, res_, up_, out, part,
            n, c1, c2, h, w, c_out, oh, ow, stride, padding,
            *x.stride(), *x2_.stride(), *weight.stride(), *res_.stride(), *up_.stride(), *out.stride(),
            KH=kh, KW=kw, HAS_X2=x2 is not None, HAS_SCALE=in_scale is not None,
            HAS_SHIFT=in_shift is not None, IN_RELU=in_relu, POOL_X=pool_x, POOL_X2=pool_x2, ALLOW_TF32=allow_tf32,
            **flags, **cfg)
        if split > 1:  # deterministic sum of the partials, then the epilogue once
            block_m, block_n = REDUCE_BLOCK
            _launcher(conv_split_k_reduce_kernel)[(triton.cdiv(c_out, block_n) * triton.cdiv(m, block_m),)](
                part, bias_, res_, up_, out, m, c_out, oh, ow, *res_.stride(), *up_.stride(), *out.stride(),
                **flags, SPLIT_K=split, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
        return out

    @conv_bn_relu_triton.register_fake
    def _(x, weight, bias, x2, in_scale, in_shift, residual, upsample, stride, padding, in_relu, out_relu,
          allow_tf32, pool_x=False, pool_x2=False, pool_residual=False):
        torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "conv_bn_relu_triton needs 4-D x and weight")
        return _conv_output(x, weight, stride, padding, pool_x)

    def decode_heatmaps_impl(heatmaps, flipped, flip_perm):
        return decode_heatmaps_triton(heatmaps, flipped, list(flip_perm))

    def conv_bn_relu_impl(x, weight, bias=None, *, stride=1, padding=None, in_scale=None, in_shift=None,
                          in_relu=False, out_relu=False, residual=None, upsample=None):
        pad = weight.shape[-1] // 2 if padding is None else padding
        return conv_bn_relu_triton(x, weight, bias, None, in_scale, in_shift, residual, upsample,
                                   stride, pad, in_relu, out_relu, _allow_tf32())

    def residual_block_impl(x, block, upsample=None, pool_input=False):
        tf32 = _allow_tf32()
        h = conv_bn_relu_triton(x, block.w1, block.b1, None, block.in_scale, block.in_shift, None, None,
                                1, 0, True, True, tf32, pool_input)
        h = conv_bn_relu_triton(h, block.w2, block.b2, None, None, None, None, None, 1, 1, False, True, tf32)
        w, b = block.last_gemm()
        if block.ws is None:  # the identity skip: x (pooled) added in the epilogue
            return conv_bn_relu_triton(h, w, b, None, None, None, x, upsample, 1, 0, False, False, tf32,
                                       pool_residual=pool_input)
        return conv_bn_relu_triton(h, w, b, x, None, None, None, upsample, 1, 0, False, False, tf32,
                                   pool_x2=pool_input)

    UPSAMPLE_ADD.register("triton", upsample_add_triton, _check_upsample_add)
    DECODE_HEATMAPS.register("triton", decode_heatmaps_impl, _check_decode_heatmaps)
    CONV_BN_RELU.register("triton", conv_bn_relu_impl, _check_conv_bn_relu)
    RESIDUAL_BLOCK.register("triton", residual_block_impl, _check_residual_block)


def _register_unavailable(reason: str) -> None:
    """Register the backend so that forcing it says why the kernels cannot run."""

    def unavailable(*args, **kwargs):
        raise AssertionError(reason)  # never selected: its check always gives a reason

    for op in (UPSAMPLE_ADD, DECODE_HEATMAPS, CONV_BN_RELU, RESIDUAL_BLOCK):
        op.register("triton", unavailable, lambda *args, **kwargs: [reason])


if IMPORT_ERROR is None:
    _patch_interpreter_scalars()
    _register_ops()
else:
    _register_unavailable(IMPORT_ERROR)
