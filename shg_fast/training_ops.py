"""Memory-efficient training pieces of the Stacked Hourglass: exact gradients, fewer saved tensors.

The reference model saves, per BN → ReLU → conv, the BN input, the ReLU output (which is the
conv input) and BN's statistics; each max-pool saves its input and an int64 index map. Here:

* :class:`BNReLUConv` (``conv(relu(batch_norm(x)))`` on batch statistics) saves only the BN
  input ``x`` (usually saved anyway, as the residual or the previous conv's output) and the
  per-channel statistics; backward recomputes ``relu(BN(x))`` for the conv's weight gradient
  and the ReLU mask, then applies BN's backward. Forward and backward compute the activation
  with the same code, so the gradient is the exact gradient of what forward computed.
* :class:`MaxPool2x2` saves only its input (already saved by the block that reads the same
  tensor) and recomputes the argmax in backward: no index map.
* The hourglass's ``up1 + upsample(low)`` is :func:`shg_fast.ops.upsample_add` (one pass, no
  upsampled temporary, backward a 2x2 sum of the gradient, nothing saved); residual additions
  save nothing either.

Batch statistics are float32 (float64 for float64 models), also under autocast, where the conv
runs in the autocast dtype; the running statistics and ``num_batches_tracked`` are updated as
``nn.BatchNorm2d`` does (on the CPU by ATen's own ``batch_norm_update_stats``: bit-identical).

Devices (decided up front, never by catching errors; :func:`shg_fast.ops.bn_train.training_backend`):
CUDA tensors use the Triton kernels of :mod:`shg_fast.ops.bn_train` for the statistics, the
recomputation and BN+ReLU's backward; NCHW-contiguous CPU tensors its C++ kernels for the
activation (one pass), BN+ReLU's backward (two passes, the ReLU mask recomputed from ``x``) and
the max-pool's backward, with ATen's statistics; anything else (channels_last on the CPU, an
extension without these kernels) ATen's composite ops.

A block runs this path only when :func:`block_reasons` is empty: its
BNs are plain ``nn.BatchNorm2d`` in training mode with affine parameters and running statistics,
its convs plain ``nn.Conv2d`` (stride 1, "same" zero padding), float32/float64 parameters.
Anything else -- ``SyncBatchNorm`` after ``convert_sync_batchnorm``, a BN in eval mode, a
replaced module -- runs that block's reference ``forward`` (so SyncBatchNorm still syncs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import reference
from .ops.bn_train import (batch_stats, bn_relu, bn_relu_backward, max_pool2x2_backward, training_backend,
                           triton_reasons)
from .ops.upsample_add import upsample_add

__all__ = ["BNReLUConv", "MaxPool2x2", "bn_relu_conv", "max_pool_2x2", "residual", "hourglass", "sequence",
           "bn_reasons", "conv_reasons", "block_reasons", "saved_tensor_bytes", "PARAMETER_DTYPES"]

#: Parameter dtypes of the memory-efficient path (16-bit parameters run the reference computation;
#: autocast with float32 parameters is supported).
PARAMETER_DTYPES = (torch.float32, torch.float64)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _triton_statistics(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and not triton_reasons(x)


def _scale_shift(weight, bias, mean, invstd):
    scale = weight.to(invstd.dtype) * invstd
    return scale, bias.to(invstd.dtype) - mean * scale


def _activation(x, scale, shift, dtype, backend: str) -> torch.Tensor:
    """``relu(x * scale + shift)`` in ``dtype``: the same code in forward and in backward's recomputation."""
    if backend != "aten":
        return bn_relu(x, scale, shift, dtype, backend=backend)
    view = (1, -1, 1, 1)
    return torch.addcmul(shift.view(view), x, scale.view(view)).relu_().to(dtype)


class BNReLUConv(torch.autograd.Function):
    """``conv2d(relu(x * invstd * w + b - mean * invstd * w), conv_weight, conv_bias)`` with batch statistics.

    ``mean``/``invstd`` must be the batch statistics of ``x`` (computed without gradient): the
    backward differentiates through them analytically, as BatchNorm's does. Saves ``x`` and the
    parameters only. The conv runs in ``dtype`` (the autocast dtype, or x's); statistics float32+.
    ``backend`` is :func:`~shg_fast.ops.bn_train.training_backend`'s choice for ``x`` and ``dtype``,
    made once by the caller and used again by the backward's recomputation.
    """

    @staticmethod
    def forward(x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias, padding: int, dtype: torch.dtype,
                backend: str):
        with torch.autocast(x.device.type, enabled=False):
            scale, shift = _scale_shift(bn_weight, bn_bias, mean, invstd)
            a = _activation(x, scale, shift, dtype, backend)
            return F.conv2d(a, conv_weight.to(dtype), None if conv_bias is None else conv_bias.to(dtype),
                            padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias, padding, dtype, backend = inputs
        ctx.save_for_backward(x, mean, invstd, bn_weight, bn_bias, conv_weight)
        ctx.padding, ctx.dtype, ctx.has_bias = padding, dtype, conv_bias is not None
        ctx.backend = backend  # backward recomputes the activation with forward's code
        ctx.set_materialize_grads(False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 10
        x, mean, invstd, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
        need_x, _, _, need_bw, need_bb, need_cw, need_cb = ctx.needs_input_grad[:7]
        with torch.autocast(x.device.type, enabled=False):
            scale, shift = _scale_shift(bn_weight, bn_bias, mean, invstd)
            a = _activation(x, scale, shift, ctx.dtype, ctx.backend)
            weight = conv_weight.to(ctx.dtype)
            grad_a, grad_cw, grad_cb = torch.ops.aten.convolution_backward(
                grad.to(ctx.dtype), a, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1],
                [ctx.padding] * 2, [1, 1], False, [0, 0], 1, [need_x or need_bw or need_bb, need_cw, need_cb])
            dx = dw = db = None
            if grad_a is not None:
                dx, dw, db = _bn_relu_backward(grad_a, a, x, bn_weight, bn_bias, mean, invstd, ctx.backend,
                                               (need_x, need_bw, need_bb))
        return (dx, None, None, dw, db, None if grad_cw is None else grad_cw.to(conv_weight.dtype),
                None if grad_cb is None else grad_cb.to(conv_weight.dtype), None, None, None)


def _bn_relu_backward(grad_a, a, x, weight, bias, mean, invstd, backend: str, mask):
    """``(dx, d weight, d bias)`` of ``a = relu(BN(x))`` given ``d a``; the "aten" path overwrites ``grad_a``."""
    if backend != "aten":
        dx, dw, db = bn_relu_backward(grad_a, x, weight, bias, mean, invstd, backend=backend)
        return dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None
    # The ReLU's backward in place into grad_a (a fresh tensor of ours); a > 0 exactly where BN(x) > 0.
    grad_y = torch.ops.aten.threshold_backward.grad_input(grad_a, a, 0, grad_input=grad_a).to(x.dtype)
    return torch.ops.aten.native_batch_norm_backward(grad_y, x, weight, None, None, mean, invstd, True, 0.0,
                                                     list(mask))


class MaxPool2x2(torch.autograd.Function):
    """``F.max_pool2d(x, 2, 2)`` saving only ``x``: backward recomputes the argmax (first maximum, as ATen)."""

    @staticmethod
    def forward(x):
        return F.max_pool2d(x, 2, 2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return max_pool2x2_backward(grad, x)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2/2 max-pool (values and gradients as ``F.max_pool2d``) that saves no index map."""
    return MaxPool2x2.apply(x)


def bn_reasons(bn: nn.Module) -> list[str]:
    """Why ``bn`` cannot run on the memory-efficient path (empty when it can)."""
    if type(bn) is not nn.BatchNorm2d:
        return [f"{type(bn).__name__} is not a plain nn.BatchNorm2d (SyncBatchNorm and subclasses run their own forward)"]
    reasons = []
    if not bn.training:
        reasons.append("BN in eval mode (running statistics)")
    if not (bn.affine and bn.track_running_stats):
        reasons.append("BN without affine parameters or running statistics")
    elif bn.weight.dtype not in PARAMETER_DTYPES:
        reasons.append(f"parameters in {bn.weight.dtype}")
    return reasons


def conv_reasons(conv: nn.Module) -> list[str]:
    """Why ``conv`` cannot follow a fused BN+ReLU (empty when it can)."""
    if type(conv) is not nn.Conv2d:
        return [f"{type(conv).__name__} is not a plain nn.Conv2d"]
    k = conv.kernel_size[0]
    if (conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros"):
        return ["conv is not an odd square kernel with stride 1 and 'same' zero padding"]
    if conv.weight.dtype not in PARAMETER_DTYPES:
        return [f"parameters in {conv.weight.dtype}"]
    return []


def block_reasons(block: nn.Module) -> list[str]:
    """Why a ``reference.Residual`` cannot run on the memory-efficient path (empty when it can)."""
    if type(block) is not reference.Residual:
        return [f"{type(block).__name__} is not a reference.Residual"]
    reasons = []
    for bn, conv in ((block.bn1, block.conv1), (block.bn2, block.conv2), (block.bn3, block.conv3)):
        reasons += bn_reasons(bn) + conv_reasons(conv)
    return reasons


def _batch_statistics(bn: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and invstd of ``x`` (no gradient); updates ``bn``'s running statistics as ``nn.BatchNorm2d``."""
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    x = x.detach()
    with torch.no_grad():
        if _triton_statistics(x):
            mean, var = batch_stats(x)
            count = x.numel() // x.shape[1]
            bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(var.to(bn.running_var.dtype), alpha=momentum * count / (count - 1))
        else:
            if x.numel() // x.shape[1] < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
            mean, var = torch.batch_norm_update_stats(x, bn.running_mean, bn.running_var, momentum)
        return mean, torch.rsqrt(var + bn.eps)


def bn_relu_conv(x: torch.Tensor, bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor | None,
                 padding: int) -> torch.Tensor:
    """``conv2d(relu(bn(x)), weight, bias, padding)`` in training mode, through :class:`BNReLUConv`."""
    mean, invstd = _batch_statistics(bn, x)
    dtype = _compute_dtype(x)
    return BNReLUConv.apply(x, mean, invstd, bn.weight, bn.bias, weight, bias, padding, dtype,
                            training_backend(x, dtype))


def _bn_conv(x: torch.Tensor, bn: nn.BatchNorm2d, conv: nn.Conv2d) -> torch.Tensor:
    return bn_relu_conv(x, bn, conv.weight, conv.bias, conv.padding[0])


def residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a ``reference.Residual``, memory-efficient when :func:`block_reasons` allows."""
    if block_reasons(block):
        return block(x)
    h = _bn_conv(x, block.bn1, block.conv1)
    h = _bn_conv(h, block.bn2, block.conv2)
    h = _bn_conv(h, block.bn3, block.conv3)
    return h + (x if block.skip is None else block.skip(x))


def sequence(modules: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An ``nn.Sequential`` of residuals, each through :func:`residual`."""
    for module in modules:
        x = residual(module, x)
    return x


def hourglass(hg: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``hg(x)`` for a ``reference.Hourglass``: its residuals memory-efficient, max-pool without indices,
    the upsample-add in one op. Another module type runs its own forward."""
    if type(hg) is not reference.Hourglass:
        return hg(x)
    up1 = sequence(hg.up1, x)
    low = sequence(hg.low1, max_pool_2x2(x))
    low = hourglass(hg.low2, low) if hg.depth > 1 else sequence(hg.low2, low)
    low = sequence(hg.low3, low)
    if low.dtype != up1.dtype:  # a residual that fell back to its own forward under autocast
        return up1 + F.interpolate(low, scale_factor=2, mode="nearest")
    return upsample_add(low, up1)


def saved_tensor_bytes(fn, *args, exclude=(), **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` and count the bytes autograd saves for backward meanwhile.

    Every tensor passed through ``torch.autograd.graph.saved_tensors_hooks`` counts once per
    distinct storage (a tensor saved by several nodes, or views of one storage, count once), at
    the storage's full size; parameters count too, unless their storages are among those of the
    tensors in ``exclude`` (e.g. ``model.parameters()``). Returns ``(bytes, fn's result)``.
    """
    storages: dict[tuple, int] = {}
    skip = {(t.device, t.untyped_storage().data_ptr()) for t in exclude}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in skip:
            storages[key] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(*args, **kwargs)
    return sum(storages.values()), result
