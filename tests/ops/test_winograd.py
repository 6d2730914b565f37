"""The CPU Winograd F(4x4, 3x3) convolution against its pure-PyTorch twin (F.conv2d)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shg_fast import BackendUnavailableError
from shg_fast.ops import winograd_available, winograd_conv3x3, winograd_conv3x3_reference, winograd_weight
from shg_fast.ops.winograd import winograd_isa
from shg_fast.tolerances import TOLERANCES, WINOGRAD_ERROR_FACTOR, max_rel_error

pytestmark = pytest.mark.skipif(not winograd_available(), reason="the C++ extension is not built")

# (N, C_in, C_out, H, W): single pixel, partial tiles at both edges, channel counts off the 8-lane
# vector width, exact tiles, a batch. C_out a multiple of 16 runs float32 position GEMMs on the
# micro-tile (tile counts off its 6 rows: 4, 35, 18), other C_out on at::bmm.
SHAPES = [(1, 3, 5, 1, 1), (2, 17, 9, 7, 13), (1, 16, 16, 8, 8), (3, 20, 33, 9, 6), (1, 8, 8, 4, 5),
          (2, 64, 24, 21, 19), (1, 7, 48, 19, 25), (2, 24, 32, 11, 10)]


def make(shape, dtype, seed=0):
    n, c_in, c_out, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, c_in, h, w, generator=g) * 2 - 1).to(dtype)
    weight = ((torch.rand(c_out, c_in, 3, 3, generator=g) * 2 - 1) / (3 * c_in ** 0.5)).to(dtype)
    bias = (torch.rand(c_out, generator=g) - 0.5).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_matches_direct_convolution(shape, relu, with_bias, channels_last, poison_empty):
    x, weight, bias = make(shape, torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = bias if with_bias else None
    out = winograd_conv3x3(x, winograd_weight(weight), bias, relu=relu)
    truth = winograd_conv3x3_reference(x, weight, bias, relu=relu)
    assert out.shape == truth.shape and out.dtype == torch.float64
    assert not torch.isnan(out).any()
    assert max_rel_error(out, truth) <= TOLERANCES["float64"]
    expect_nhwc = channels_last and not x.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if expect_nhwc else torch.contiguous_format)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_tolerance(shape, poison_empty):
    x, weight, bias = make(shape, torch.float32)
    out = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_weight(weight), bias, relu=True)
    truth = winograd_conv3x3_reference(x.double(), weight.double(), bias.double(), relu=True)
    assert max_rel_error(out, truth) <= TOLERANCES["float32"]


@pytest.mark.parametrize("shape", [(2, 64, 24, 21, 19), (1, 128, 128, 32, 32)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_error_within_factor_of_direct(shape, seed):
    """At the network's channel counts (where a direct conv's error is many roundings, not one)."""
    x, weight, bias = make(shape, torch.float32, seed)
    x = x.contiguous(memory_format=torch.channels_last)
    truth = winograd_conv3x3_reference(x.double(), weight.double(), bias.double(), relu=True)
    err = max_rel_error(winograd_conv3x3(x, winograd_weight(weight), bias, relu=True), truth)
    direct_err = max_rel_error(winograd_conv3x3_reference(x, weight, bias, relu=True), truth)
    assert err <= WINOGRAD_ERROR_FACTOR * direct_err


def test_many_tiles_go_through_in_chunks_and_the_scratch_is_reused():
    """More tiles than one 16 MB pass holds (224 tiles of 36 x (512 + 8) floats), then smaller calls."""
    for shape in [(1, 512, 8, 64, 60), (1, 16, 16, 5, 5), (2, 512, 8, 33, 35), (1, 3, 4, 9, 9)]:
        x, weight, bias = make(shape, torch.float32)
        x = x.contiguous(memory_format=torch.channels_last)
        truth = winograd_conv3x3_reference(x.double(), weight.double(), bias.double())
        assert max_rel_error(winograd_conv3x3(x, winograd_weight(weight), bias), truth) <= TOLERANCES["float32"]


def test_threads_do_not_change_the_result(one_thread):
    x, weight, bias = make((2, 32, 48, 20, 20), torch.float32)
    u = winograd_weight(weight)
    single = winograd_conv3x3(x, u, bias)
    torch.set_num_threads(2)
    assert torch.equal(winograd_conv3x3(x, u, bias), single)


@pytest.mark.parametrize("c_out", [16, 9])
def test_out_buffer(c_out):
    """out=: written into the caller's (NaN-poisoned) channels_last buffer; overlapping x or the wrong layout raises."""
    x, weight, bias = make((2, 8, c_out, 9, 7), torch.float32)
    u = winograd_weight(weight)
    expected = winograd_conv3x3(x, u, bias, relu=True)
    out = torch.full((2, c_out, 9, 7), float("nan")).contiguous(memory_format=torch.channels_last)
    assert winograd_conv3x3(x, u, bias, relu=True, out=out) is out
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="out must be"):
        winograd_conv3x3(x, u, bias, out=torch.empty(2, c_out, 9, 7))
    base = torch.rand(2 * 63 * c_out + 8)  # x and out: channels_last views of one buffer, 8 floats apart
    x_shared = base[:2 * 63 * 8].view(2, 9, 7, 8).permute(0, 3, 1, 2)
    out_shared = base[8:].view(2, 9, 7, c_out).permute(0, 3, 1, 2)
    with pytest.raises(RuntimeError, match="must not overlap x"):
        torch.ops.shg_fast.winograd_conv3x3_out(x_shared, u, bias, False, out_shared)


def test_weight_transform_is_float64_then_cast():
    weight = torch.randn(4, 3, 3, 3)
    u = winograd_weight(weight)
    assert u.shape == (36, 3, 4) and u.dtype == torch.float32
    assert torch.equal(u, winograd_weight(weight.double()).float())


def test_inference_mode_and_grad_mode_outputs():
    x, weight, bias = make((1, 8, 8, 6, 6), torch.float32)
    u = winograd_weight(weight)
    with torch.inference_mode():
        inside = winograd_conv3x3(x, u, bias)
    assert inside.is_inference()
    assert torch.equal(winograd_conv3x3(x, u, bias), inside)


def test_library_ops_pass_opcheck():
    x, weight, bias = make((2, 5, 7, 6, 9), torch.float32)
    torch.library.opcheck(torch.ops.shg_fast.winograd_weight, (weight,))
    u = winograd_weight(weight)
    torch.library.opcheck(torch.ops.shg_fast.winograd_conv3x3, (x, u, bias, True))
    torch.library.opcheck(torch.ops.shg_fast.winograd_conv3x3,
                          (x.contiguous(memory_format=torch.channels_last), u, None, False))
    out = torch.empty(2, 7, 6, 9).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.shg_fast.winograd_conv3x3_out, (x, u, bias, True, out))


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda x, u, b: (x[0], u, b), ValueError, "x must be 4-D"),
        (lambda x, u, b: (x.half(), u, b), TypeError, "x dtype"),
        (lambda x, u, b: (x, u.double(), b), TypeError, "weight_t dtype"),
        (lambda x, u, b: (x, u[:, :2], b), ValueError, "weight_t must be"),
        (lambda x, u, b: (x, u[:35], b), ValueError, "weight_t must be"),
        (lambda x, u, b: (x, u, b[:3]), ValueError, "bias must be"),
        (lambda x, u, b: ("x", u, b), TypeError, "must be a Tensor"),
    ],
)
def test_bad_arguments_raise(change, exc, match):
    x, weight, bias = make((1, 4, 6, 5, 5), torch.float32)
    with pytest.raises(exc, match=match):
        winograd_conv3x3(*change(x, winograd_weight(weight), bias))


def test_bad_weight_raises():
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 3, 3\)"):
        winograd_weight(torch.randn(4, 3, 5, 5))
    with pytest.raises(TypeError, match="dtype"):
        winograd_weight(torch.randn(4, 3, 3, 3).half())


def test_cpp_checks_guard_the_raw_op():
    x, weight, bias = make((1, 4, 6, 5, 5), torch.float32)
    with pytest.raises(RuntimeError, match="weight_t must be"):
        torch.ops.shg_fast.winograd_conv3x3(x, winograd_weight(weight)[:, :3], bias, False)


def test_missing_kernel_raises_backend_unavailable(monkeypatch):
    from shg_fast.ops import winograd

    monkeypatch.setattr(winograd, "winograd_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="winograd_conv3x3"):
        winograd.winograd_conv3x3(torch.randn(1, 2, 4, 4), torch.randn(36, 2, 3))


def test_baseline_instruction_set_path(tmp_path):
    """SHG_FAST_CPU_BASELINE=1 runs the transforms and GEMM micro-tile built for the baseline ISA (what a CPU
    without AVX2 gets)."""
    x, weight, bias = make((2, 24, 48, 13, 10), torch.float32)
    torch.save((x, weight, bias), tmp_path / "case.pt")
    code = ("import torch, sys; from shg_fast.ops import winograd_conv3x3, winograd_weight; "
            "from shg_fast.ops.winograd import winograd_isa; "
            "x, w, b = torch.load(sys.argv[1]); torch.save((winograd_isa(), winograd_conv3x3(x, winograd_weight(w), b)), "
            "sys.argv[2])")
    env = {**os.environ, "SHG_FAST_CPU_BASELINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "case.pt"), str(tmp_path / "out.pt")], env=env,
                   check=True, timeout=120)
    isa, baseline = torch.load(tmp_path / "out.pt")
    assert isa == "baseline"
    truth = winograd_conv3x3_reference(x.double(), weight.double(), bias.double())
    assert max_rel_error(baseline, truth) <= TOLERANCES["float32"]
    assert max_rel_error(winograd_conv3x3(x, winograd_weight(weight), bias), truth) <= TOLERANCES["float32"]


def test_isa_is_avx2_where_the_cpu_has_it():
    if os.environ.get("SHG_FAST_CPU_BASELINE") == "1":
        pytest.skip("SHG_FAST_CPU_BASELINE=1 is set")
    assert winograd_isa() == ("avx2+fma" if _cpu_has_avx2_fma() else "baseline")


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return platform.machine() == "x86_64" and "avx2" in flags and "fma" in flags
