"""The CPU 1x1 convolution (clamp prologue, bias, add, ReLU fused) against its pure-PyTorch twin."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

from shg_fast import BackendUnavailableError
from shg_fast.ops import conv1x1, conv1x1_available, conv1x1_reference, conv1x1_weight
from shg_fast.tolerances import TOLERANCES, max_rel_error

pytestmark = pytest.mark.skipif(not conv1x1_available(), reason="the C++ extension is not built")

# (N, C_in, C_out, H, W): one pixel and one channel; C_out off the 16-wide panels; pixel counts off the
# 6-pixel micro-tile and the 96-pixel block (91, 100, 2 x 97); few pixels and many panels (split over
# the threads by panel); the network's 64 -> 128 and 256 -> 272 (merged head) shapes on small maps.
SHAPES = [(1, 1, 1, 1, 1), (1, 3, 5, 7, 13), (1, 17, 33, 10, 10), (2, 9, 16, 1, 97), (1, 64, 272, 4, 4),
          (2, 64, 128, 9, 11), (1, 256, 272, 8, 8)]
FUSIONS = {"plain": {}, "relu": {"relu": True}, "clamp+relu": {"clamp": True, "relu": True},
           "add": {"add": True}, "clamp+add+relu": {"clamp": True, "add": True, "relu": True}}


def make(shape, seed=0, clamp=False, add=False):
    """Random x, weight, bias and the optional clamp bounds (finite, infinite and equal ones) and add."""
    n, c_in, c_out, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c_in, h, w, generator=g) * 2 - 1
    weight = (torch.rand(c_out, c_in, 1, 1, generator=g) * 2 - 1) / c_in ** 0.5
    bias = torch.rand(c_out, generator=g) - 0.5
    bounds = None
    if clamp:  # as _clamp_prologue makes them: [c, inf) where s > 0, (-inf, c] where s < 0, [c, c] where s == 0
        c = torch.rand(c_in, generator=g) - 0.5
        kind = torch.arange(c_in) % 3
        inf = torch.full_like(c, float("inf"))
        bounds = (torch.where(kind == 1, -inf, c), torch.where(kind == 0, inf, c))
    extra = torch.rand(n, c_out, h, w, generator=g) - 0.5 if add else None
    return x, weight, bias, bounds, extra


def run_both(shape, fusion, channels_last=True, with_bias=True, seed=0):
    opts = FUSIONS[fusion]
    x, weight, bias, bounds, extra = make(shape, seed, opts.get("clamp", False), opts.get("add", False))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        extra = None if extra is None else extra.contiguous(memory_format=torch.channels_last)
    bias = bias if with_bias else None
    out = conv1x1(x, conv1x1_weight(weight), weight.shape[0], bias, clamp=bounds, add=extra,
                  relu=opts.get("relu", False))
    as64 = (lambda t: None if t is None else t.double())
    truth = conv1x1_reference(x.double(), weight.double(), as64(bias),
                              clamp=None if bounds is None else tuple(map(as64, bounds)), add=as64(extra),
                              relu=opts.get("relu", False))
    return x, out, truth


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_float32_matches_float64_twin(shape, fusion, poison_empty):
    x, out, truth = run_both(shape, fusion)
    assert out.shape == truth.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()  # every element written (torch.empty is NaN-filled here)
    assert max_rel_error(out, truth) <= TOLERANCES["float32"]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layouts_and_optional_bias(channels_last, with_bias, poison_empty):
    x, out, truth = run_both((2, 24, 40, 5, 7), "clamp+add+relu", channels_last, with_bias)
    assert max_rel_error(out, truth) <= TOLERANCES["float32"]
    expect_nhwc = channels_last and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if expect_nhwc else torch.contiguous_format)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_as_the_float32_reference_at_network_sizes(seed):
    """256 -> 128 with the clamp at 16x16: no worse than ATen's own float32 conv (the same sums, fused)."""
    x, weight, bias, bounds, extra = make((1, 256, 128, 16, 16), seed, clamp=True)
    x = x.contiguous(memory_format=torch.channels_last)
    as64 = tuple(t.double() for t in bounds)
    truth = conv1x1_reference(x.double(), weight.double(), bias.double(), clamp=as64, relu=True)
    err = max_rel_error(conv1x1(x, conv1x1_weight(weight), 128, bias, clamp=bounds, relu=True), truth)
    reference_err = max_rel_error(conv1x1_reference(x, weight, bias, clamp=bounds, relu=True), truth)
    assert err <= 2 * reference_err + 1e-7


def test_nan_and_inf_propagate_through_clamp_add_and_relu():
    """A NaN input pixel makes that output pixel NaN (clamp and ReLU keep it); an Inf in add stays Inf."""
    x, weight, bias, bounds, extra = make((1, 16, 20, 6, 5), clamp=True, add=True)
    x[0, 3, 2, 1] = float("nan")
    x[0, 5, 4, 4] = float("inf")  # clamped where the channel's hi is finite, else Inf through the GEMM
    extra[0, 7, 0, 0] = float("inf")
    out = conv1x1(x, conv1x1_weight(weight), 20, bias, clamp=bounds, add=extra, relu=True)
    twin = conv1x1_reference(x, weight, bias, clamp=bounds, add=extra, relu=True)
    bad = ~torch.isfinite(twin)
    assert torch.isnan(twin[0, :, 2, 1]).all() and bad.any()
    assert torch.equal(torch.isnan(out), torch.isnan(twin)) and torch.equal(torch.isinf(out), torch.isinf(twin))
    assert max_rel_error(out.masked_fill(bad, 0), twin.masked_fill(bad, 0)) <= TOLERANCES["float32"]


@pytest.mark.parametrize("shape", [(2, 48, 80, 20, 20), (1, 64, 272, 4, 4)])
def test_threads_do_not_change_the_result(shape, one_thread):
    """Threads split pixels (and, on small maps, panels), never a sum: bitwise the same on any thread count."""
    x, weight, bias, bounds, extra = make(shape, clamp=True, add=True)
    packed = conv1x1_weight(weight)
    single = conv1x1(x, packed, weight.shape[0], bias, clamp=bounds, add=extra)
    torch.set_num_threads(2)
    assert torch.equal(conv1x1(x, packed, weight.shape[0], bias, clamp=bounds, add=extra), single)


@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (1, 1), (4, 97)])
def test_nearest_upsampled_add_low(hw, poison_empty):
    """add_low, (N, C_out, ceil(H/2), ceil(W/2)), is added nearest-upsampled: odd sizes repeat the last row/column."""
    h, w = hw
    x, weight, bias, bounds, extra = make((2, 12, 20, h, w), clamp=True, add=True)
    low = torch.rand(2, 20, (h + 1) // 2, (w + 1) // 2) - 0.5
    out = conv1x1(x, conv1x1_weight(weight), 20, bias, clamp=bounds, add=extra, add_low=low, relu=True)
    truth = conv1x1_reference(x.double(), weight.double(), bias.double(), clamp=tuple(t.double() for t in bounds),
                              add=extra.double(), add_low=low.double(), relu=True)
    assert torch.isfinite(out).all() and max_rel_error(out, truth) <= TOLERANCES["float32"]


def test_out_buffer_is_written_in_place_and_may_be_add():
    """out=: the result lands in the caller's (NaN-poisoned) buffer; out may be add itself (in-place residual)."""
    x, weight, bias, bounds, extra = make((2, 24, 40, 9, 11), clamp=True, add=True)
    x, extra = (t.contiguous(memory_format=torch.channels_last) for t in (x, extra))
    packed = conv1x1_weight(weight)
    expected = conv1x1(x, packed, 40, bias, clamp=bounds, add=extra, relu=True)
    out = torch.full_like(expected, float("nan"))
    assert conv1x1(x, packed, 40, bias, clamp=bounds, add=extra, relu=True, out=out) is out
    assert torch.equal(out, expected)
    residual = extra.clone()
    conv1x1(x, packed, 40, bias, clamp=bounds, add=residual, relu=True, out=residual)
    assert torch.equal(residual, expected)
    with pytest.raises(ValueError, match="out must be"):
        conv1x1(x, packed, 40, bias, out=torch.empty(2, 40, 9, 11))  # NCHW


def test_weight_packing_layout():
    weight = torch.randn(20, 3, 1, 1)
    packed = conv1x1_weight(weight)
    assert packed.shape == (2, 3, 16) and packed.is_contiguous()
    assert torch.equal(packed[0], weight[:16, :, 0, 0].t())
    assert torch.equal(packed[1, :, :4], weight[16:, :, 0, 0].t())
    assert not packed[1, :, 4:].any()


def test_inference_mode_and_grad_mode():
    x, weight, bias, _, _ = make((1, 8, 8, 6, 6))
    packed = conv1x1_weight(weight)
    with torch.inference_mode():
        inside = conv1x1(x, packed, 8, bias)
    assert inside.is_inference()
    assert torch.equal(conv1x1(x, packed, 8, bias), inside)
    with pytest.raises(RuntimeError, match="inference only"):
        conv1x1(x.requires_grad_(), packed, 8, bias)


def test_library_ops_pass_opcheck():
    x, weight, bias, bounds, extra = make((2, 5, 7, 6, 9), clamp=True, add=True)
    torch.library.opcheck(torch.ops.shg_fast.conv1x1_weight, (weight,))
    packed = conv1x1_weight(weight)
    low = torch.rand(2, 7, 3, 5)
    torch.library.opcheck(torch.ops.shg_fast.conv1x1, (x, packed, 7, bias, *bounds, extra, low, True))
    torch.library.opcheck(torch.ops.shg_fast.conv1x1,
                          (x.contiguous(memory_format=torch.channels_last), packed, 7, None, None, None, None, None,
                           False))
    out = torch.empty(2, 7, 6, 9).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.shg_fast.conv1x1_out, (x, packed, 7, bias, *bounds, extra, low, True, out))


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda a: {**a, "x": a["x"][0]}, ValueError, "x must be 4-D"),
        (lambda a: {**a, "x": a["x"].double()}, TypeError, "x dtype must be one of"),
        (lambda a: {**a, "weight_p": a["weight_p"][:, :2]}, ValueError, "weight_p must be"),
        (lambda a: {**a, "out_channels": 40}, ValueError, "weight_p must be"),
        (lambda a: {**a, "out_channels": 0}, ValueError, "out_channels must be"),
        (lambda a: {**a, "bias": a["bias"][:3]}, ValueError, "bias must have"),
        (lambda a: {**a, "clamp": (a["clamp"][0],)}, TypeError, "clamp must be"),
        (lambda a: {**a, "clamp": (a["clamp"][0][:2], a["clamp"][1])}, ValueError, "clamp lo must have"),
        (lambda a: {**a, "add": a["add"][:, :3]}, ValueError, "add must be"),
        (lambda a: {**a, "add_low": torch.zeros(1, 6, 2, 2)}, ValueError, "add_low must be"),
        (lambda a: {**a, "out": torch.zeros(1, 6, 5, 5).double()}, TypeError, "out dtype must be one of"),
        (lambda a: {**a, "x": "x"}, TypeError, "must be a Tensor"),
    ],
)
def test_bad_arguments_raise(change, exc, match):
    x, weight, bias, bounds, extra = make((1, 4, 6, 5, 5), clamp=True, add=True)
    args = {"x": x, "weight_p": conv1x1_weight(weight), "out_channels": 6, "bias": bias, "clamp": bounds,
            "add": extra}
    args = change(args)
    with pytest.raises(exc, match=match):
        conv1x1(args.pop("x"), args.pop("weight_p"), args.pop("out_channels"), args.pop("bias"), **args)


def test_bad_weight_raises():
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 1, 1\)"):
        conv1x1_weight(torch.randn(4, 3, 3, 3))
    with pytest.raises(TypeError, match="float32"):
        conv1x1_weight(torch.randn(4, 3, 1, 1).double())


def test_cpp_checks_guard_the_raw_op():
    x, weight, bias, bounds, _ = make((1, 4, 6, 5, 5), clamp=True)
    packed = conv1x1_weight(weight)
    with pytest.raises(RuntimeError, match="weight_p must be"):
        torch.ops.shg_fast.conv1x1(x, packed[:, :3], 6, bias, None, None, None, None, False)
    with pytest.raises(RuntimeError, match="go together"):
        torch.ops.shg_fast.conv1x1(x, packed, 6, bias, bounds[0], None, None, None, False)
    with pytest.raises(RuntimeError, match="add must be"):
        torch.ops.shg_fast.conv1x1(x, packed, 6, bias, None, None, torch.zeros(1, 6, 5, 4), None, False)
    with pytest.raises(RuntimeError, match="add_low must be"):
        torch.ops.shg_fast.conv1x1(x, packed, 6, bias, None, None, None, torch.zeros(1, 6, 2, 3), False)
    out = torch.empty(1, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="out must be"):
        torch.ops.shg_fast.conv1x1_out(x, packed, 6, bias, None, None, None, None, False, out[:, :5])
    with pytest.raises(RuntimeError, match="channels_last-contiguous"):
        torch.ops.shg_fast.conv1x1_out(x, packed, 6, bias, None, None, None, None, False, torch.empty(1, 6, 5, 5))
    base = torch.rand(150 + 6)  # channels_last views of one buffer, one pixel apart
    nhwc = (lambda t, c: t.view(1, 5, 5, c).permute(0, 3, 1, 2))
    with pytest.raises(RuntimeError, match="must not overlap add"):
        torch.ops.shg_fast.conv1x1_out(x, packed, 6, bias, None, None, nhwc(base[6:], 6), None, False,
                                       nhwc(base[:150], 6))
    with pytest.raises(RuntimeError, match="must not overlap x"):
        torch.ops.shg_fast.conv1x1_out(nhwc(base[:100], 4), conv1x1_weight(torch.rand(6, 4, 1, 1)), 6, None, None,
                                       None, None, None, False, nhwc(base[6:], 6))


def test_missing_kernel_raises_backend_unavailable(monkeypatch):
    module = importlib.import_module("shg_fast.ops.conv1x1")  # the module, not the function of that name

    monkeypatch.setattr(module, "conv1x1_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="conv1x1"):
        module.conv1x1(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 16), 3)


def test_baseline_instruction_set_path(tmp_path):
    """SHG_FAST_CPU_BASELINE=1 runs the kernel built for the baseline ISA (what a CPU without AVX2 gets)."""
    x, weight, bias, bounds, extra = make((2, 24, 40, 13, 10), clamp=True, add=True)
    torch.save((x, weight, bias, bounds, extra), tmp_path / "case.pt")
    code = ("import torch, sys; from shg_fast.ops import conv1x1, conv1x1_weight; "
            "x, w, b, c, a = torch.load(sys.argv[1]); "
            "torch.save(conv1x1(x, conv1x1_weight(w), w.shape[0], b, clamp=c, add=a, relu=True), sys.argv[2])")
    env = {**os.environ, "SHG_FAST_CPU_BASELINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "case.pt"), str(tmp_path / "out.pt")], env=env,
                   check=True, timeout=120)
    baseline = torch.load(tmp_path / "out.pt")
    truth = conv1x1_reference(x.double(), weight.double(), bias.double(), clamp=tuple(t.double() for t in bounds),
                              add=extra.double(), relu=True)
    assert max_rel_error(baseline, truth) <= TOLERANCES["float32"]
