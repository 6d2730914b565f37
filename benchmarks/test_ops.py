"""Per-op benchmarks: each fused op on each backend at the network's real shapes.

256 channels at 64², 32², 16², 8², 4² (the hourglass levels; batch 32 on a GPU, 1 on a CPU) and
heatmap decoding at (N, 16, 64, 64). A backend that cannot run on this device is left out
before anything runs, one that cannot run a particular call is skipped; the summary gives each
reason once. The Triton interpreter is not timed. Each benchmark checks its result against the
op's reference twin run in float64.
"""

import pytest
import torch

from conftest import DEVICE, ON_GPU
from shg_fast import BackendUnavailableError
from shg_fast.backends import BACKENDS, backend_status, triton_interpreter
from shg_fast.benchmarking import DTYPES
from shg_fast.tolerances import randomize_batchnorm
from shg_fast.folding import FoldedResidual
from shg_fast.ops import (conv1x1, conv1x1_available, conv1x1_reference, conv1x1_weight, conv_bn_relu,
                          decode_heatmaps, residual_block, upsample_add, winograd_available, winograd_conv3x3,
                          winograd_conv3x3_reference, winograd_weight)
from shg_fast.reference import Residual
from shg_fast.tolerances import max_rel_error, tolerance

BATCH = 32 if ON_GPU else 1
SIZES = (64, 32, 16, 8, 4)
OP_DTYPES = ("fp32", "bf16") if ON_GPU else ("fp32",)
FEATURES, MID, JOINTS = 256, 128, 16


def _rand(*shape):
    return torch.rand(*shape, device=DEVICE) * 2 - 1


def _residual_block_case(size):
    module = randomize_batchnorm(Residual(FEATURES, FEATURES).eval(), seed=0)
    block = FoldedResidual.from_module(module).to(DEVICE)
    macs = FEATURES * MID + MID * MID * 9 + MID * FEATURES
    return residual_block, (_rand(BATCH, FEATURES, size, size), block), {}, 2 * macs * size * size


def _case(op: str, size: int):
    """``(fn, args, kwargs, flops per image or None)`` for ``op`` at ``size``x``size``, in float32."""
    if op == "upsample_add":
        low, skip = _rand(BATCH, FEATURES, size // 2 or 1, size // 2 or 1), _rand(BATCH, FEATURES, size, size)
        return upsample_add, (low, skip), {}, None
    if op == "conv1x1_bn_relu":  # the residual's first conv: BN+ReLU prologue, 256 -> 128
        args = (_rand(BATCH, FEATURES, size, size), _rand(MID, FEATURES, 1, 1) / 16, _rand(MID))
        kwargs = dict(in_scale=torch.rand(FEATURES, device=DEVICE) + 0.5, in_shift=_rand(FEATURES),
                      in_relu=True, out_relu=True)
        return conv_bn_relu, args, kwargs, 2 * FEATURES * MID * size * size
    if op == "conv3x3_relu":  # the residual's middle conv, 128 -> 128
        args = (_rand(BATCH, MID, size, size), _rand(MID, MID, 3, 3) / 32, _rand(MID))
        return conv_bn_relu, args, dict(out_relu=True), 2 * MID * MID * 9 * size * size
    if op == "residual_block":
        return _residual_block_case(size)
    if op == "decode_heatmaps":
        return decode_heatmaps, (torch.rand(BATCH, JOINTS, size, size, device=DEVICE),), {}, None
    raise AssertionError(op)


def _cast(value, dtype):
    if isinstance(value, (torch.Tensor, FoldedResidual)):
        return value.to(dtype)
    return value


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _backend_params():
    """Every backend, those that cannot run on this device marked to be left out, with why."""
    status = backend_status(DEVICE)
    params = []
    for name in BACKENDS:
        why = status[name][:1]  # the first reason is the device's; later ones name the op asked about
        if name == "triton" and not why and triton_interpreter():
            why = ["TRITON_INTERPRET=1: the Triton interpreter is not timed"]
        params.append(pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=f"{name} backend: "
                                                                                     + "; ".join(why))))
    return params


CASES = [(op, size) for op in ("upsample_add", "conv1x1_bn_relu", "conv3x3_relu", "residual_block")
         for size in SIZES] + [("decode_heatmaps", 64)]


@pytest.mark.parametrize("dtype_name", OP_DTYPES)
@pytest.mark.parametrize("backend", _backend_params())
@pytest.mark.parametrize("op, size", CASES)
def test_op(op, size, backend, dtype_name, timed, benchmark):
    dtype = DTYPES[dtype_name][0]
    fn, args, kwargs, flops = _case(op, size)
    args = tuple(_cast(a, dtype) for a in args)
    kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
    try:
        fn(*args, **kwargs, backend=backend)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    benchmark.group = f"{op} {size}x{size} batch {BATCH} {dtype_name}"
    out = timed(fn, *args, images=BATCH, flops_per_image=flops, backend=backend, **kwargs)
    truth = fn(*(_cast(a, torch.float64) for a in args), backend="reference",
               **{k: _cast(v, torch.float64) for k, v in kwargs.items()})
    same_dtype = fn(*args, **kwargs, backend="reference")
    for got, ref, want in zip(_as_tuple(out), _as_tuple(same_dtype), _as_tuple(truth)):
        assert max_rel_error(got, want) <= tolerance(DTYPES[dtype_name][2], max_rel_error(ref, want))


@pytest.mark.skipif(ON_GPU or not winograd_available(), reason="CPU only; needs the C++ extension")
@pytest.mark.parametrize("algorithm", ["winograd", "onednn_direct"])
@pytest.mark.parametrize("size", SIZES[:-1])
def test_cpu_conv3x3_winograd_vs_direct(size, algorithm, timed, benchmark):
    """The residual's 3x3 conv (128 -> 128, ReLU) as the CPU runner runs it: Winograd F(4x4, 3x3)
    against oneDNN's direct convolution on prepacked weights (``SHG_FAST_WINOGRAD=0``)."""
    x = _rand(BATCH, MID, size, size).contiguous(memory_format=torch.channels_last)
    weight, bias = _rand(MID, MID, 3, 3) / 32, _rand(MID)
    if algorithm == "winograd":
        fn, args = winograd_conv3x3, (x, winograd_weight(weight), bias)
    else:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight.contiguous(memory_format=torch.channels_last), [1, 1], [1, 1], [1, 1], 1, list(x.shape))

        def fn(x, packed, bias, relu):
            return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")

        args = (x, packed, bias)
    benchmark.group = f"conv3x3_relu {size}x{size} batch {BATCH} fp32 (CPU runner)"
    with torch.inference_mode():
        out = timed(fn, *args, images=BATCH, flops_per_image=2 * MID * MID * 9 * size * size, relu=True)
    truth = winograd_conv3x3_reference(x.double(), weight.double(), bias.double(), relu=True)
    assert max_rel_error(out, truth) <= tolerance("float32")


@pytest.mark.skipif(ON_GPU or not conv1x1_available(), reason="CPU only; needs the C++ extension")
@pytest.mark.parametrize("algorithm", ["conv1x1", "onednn"])
@pytest.mark.parametrize("size", SIZES[:-1])
def test_cpu_conv1x1_clamp_relu_vs_onednn(size, algorithm, timed, benchmark):
    """The residual's first conv (256 -> 128 after the BN-ReLU prologue as a per-channel clamp, ReLU) as
    the CPU runner runs it: shg_fast::conv1x1 with the clamp and ReLU fused, against the clamp pass,
    oneDNN's conv on prepacked weights and the ReLU pass (``SHG_FAST_CONV1X1=0``)."""
    x = _rand(BATCH, FEATURES, size, size).contiguous(memory_format=torch.channels_last)
    weight, bias = _rand(MID, FEATURES, 1, 1) / 16, _rand(MID)
    lo = torch.where(torch.arange(FEATURES) % 2 == 0, _rand(FEATURES), torch.full((FEATURES,), -float("inf")))
    hi = torch.where(torch.arange(FEATURES) % 2 == 1, _rand(FEATURES), torch.full((FEATURES,), float("inf")))
    if algorithm == "conv1x1":
        fn, args = conv1x1, (x, conv1x1_weight(weight), MID, bias)
    else:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight.contiguous(memory_format=torch.channels_last), [0, 0], [1, 1], [1, 1], 1, list(x.shape))
        lo4, hi4 = lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1)

        def fn(x, packed, bias, clamp, relu):
            clamped = torch.clamp(x, lo4, hi4)
            return torch.ops.mkldnn._convolution_pointwise(clamped, packed, bias, [0, 0], [1, 1], [1, 1], 1, "none", [],
                                                           "").relu_()

        args = (x, packed, bias)
    benchmark.group = f"conv1x1 clamp+relu {size}x{size} batch {BATCH} fp32 (CPU runner)"
    with torch.inference_mode():
        out = timed(fn, *args, images=BATCH, flops_per_image=2 * FEATURES * MID * size * size, clamp=(lo, hi),
                    relu=True)
    truth = conv1x1_reference(x.double(), weight.double(), bias.double(), clamp=(lo.double(), hi.double()),
                              relu=True)
    assert max_rel_error(out, truth) <= tolerance("float32")
