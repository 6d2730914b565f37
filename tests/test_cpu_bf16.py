"""The bfloat16 CPU runner: chosen by ``auto`` under autocast or for a bf16 model where oneDNN has bf16.

Its error against float64 is at most ``LOW_PRECISION_FACTOR`` (2x) the reference's own error in
bf16 (``tolerance("bfloat16", reference_error)``). Where oneDNN has no bf16 convolutions (this
project's AVX2-only development machine) the plan runs the per-op path and says why; the
runner's own numerics (the bf16 prologue clamp, its folding, the bf16 upsample-add, the add
post-op, storage of every activation in bf16) are then tested with oneDNN's three entry points
replaced by an emulation of what oneDNN computes: bf16 inputs and weights, float32 accumulation,
bias and add in float32, one rounding of the result to bf16.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from shg_fast import StackedHourglass, cpu_runner, reference
from shg_fast.tolerances import max_rel_error, randomize_batchnorm, tolerance

NATIVE_BF16 = not cpu_runner.cpu_bf16_reasons()


def emulate_onednn(monkeypatch):
    """oneDNN's bf16 conv semantics in float32 ATen convs; bf16 reported as supported."""
    def conv(x, w, b, pad, stride):
        return F.conv2d(x.float(), w.float(), b.float(), stride, pad)

    monkeypatch.setattr(cpu_runner, "cpu_bf16_reasons", lambda: [])
    monkeypatch.setattr(cpu_runner, "_onednn_pack", lambda w, pad, stride, x_shape: w)
    monkeypatch.setattr(cpu_runner, "_onednn_conv", lambda x, w, b, pad, stride: conv(x, w, b, pad, stride).to(x.dtype))
    monkeypatch.setattr(cpu_runner, "_onednn_conv_add",
                        lambda x, a, w, b, pad, stride: (conv(x, w, b, pad, stride) + a.float()).to(x.dtype))


def models(stacks=2, features=64, seed=0, input_mean=None):
    torch.manual_seed(seed)
    ref = randomize_batchnorm(reference.StackedHourglass(stacks, features, input_mean=input_mean).eval(), seed=seed)
    fast = StackedHourglass(stacks, features, input_mean=input_mean).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def bf16_bound(ref: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(float64 truth, the bf16 bound: 2x the error of the reference model run in bf16)."""
    with torch.no_grad():
        truth = torch.stack(copy.deepcopy(ref).double()(x.double()))
        ref_bf16 = torch.stack(copy.deepcopy(ref).to(torch.bfloat16)(x.to(torch.bfloat16)))
    return truth, tolerance("bfloat16", max_rel_error(ref_bf16, truth))


def runner_of(fast: torch.nn.Module, dtype: torch.dtype) -> str:
    return fast.fused_plan(dtype).info()["runner"]


def test_bf16_support_is_detected_not_assumed():
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (cpu_runner.cpu_bf16_reasons() == []) == supported
    reasons = cpu_runner.mkldnn_runner_reasons(torch.bfloat16)
    assert bool(reasons) == (not supported) or cpu_runner.mkldnn_runner_reasons()  # forced backend: reasons anyway
    if not supported:
        assert "AVX-512" in reasons[-1] and "_is_mkldnn_bf16_supported() is False" in reasons[-1]
    assert "not torch.float16" in cpu_runner.mkldnn_runner_reasons(torch.float16)[-1]


def test_without_native_bf16_the_plan_runs_the_ops_and_says_so():
    if NATIVE_BF16:
        pytest.skip("this CPU has oneDNN bf16: the runner is taken")
    _, fast = models(1, 32)
    assert runner_of(fast, torch.bfloat16) == "ops" and runner_of(fast, torch.float32) == "mkldnn"


@pytest.mark.parametrize("how", ["autocast", "bf16 model"])
@pytest.mark.parametrize("shape", [(1, 128), (3, 192)])
def test_emulated_runner_within_twice_the_reference_bf16_error(monkeypatch, how, shape):
    emulate_onednn(monkeypatch)
    batch, size = shape
    ref, fast = models(input_mean=(0.5, 0.4, 0.3) if batch == 3 else None)
    assert runner_of(fast, torch.bfloat16) == "mkldnn"
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size))
    truth, bound = bf16_bound(ref, x)
    with torch.no_grad():
        if how == "autocast":
            with torch.autocast("cpu", torch.bfloat16):
                out = fast(x)
        else:
            out = fast.to(torch.bfloat16)(x.to(torch.bfloat16))
    out = torch.stack(out)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    steps = fast.fused_plan(torch.bfloat16).program(x.to(torch.bfloat16)).steps
    assert {s.tactic.backend for s in steps if s.op == "residual_block"} == {"mkldnn"}
    assert all(s.tactic.config.get("conv2") != "winograd" for s in steps if s.op == "residual_block")
    assert max_rel_error(out, truth) <= bound


def test_emulated_runner_keeps_nan(monkeypatch):
    emulate_onednn(monkeypatch)
    _, fast = models(1, 32)
    x = torch.rand(1, 3, 64, 64)
    x[0, :, 10, 10] = float("nan")
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = fast(x)[-1]
    assert out.isnan().any()


@pytest.mark.skipif(not NATIVE_BF16, reason="needs a CPU with oneDNN bf16 convolutions (AVX-512 BW/VL/DQ or "
                                            "AVX-NE-CONVERT; AMX or AVX-512 BF16 for speed); this one has none")
@pytest.mark.parametrize("batch", [1, 2])
def test_native_runner_within_twice_the_reference_bf16_error(batch):
    ref, fast = models()
    assert runner_of(fast, torch.bfloat16) == "mkldnn"
    x = torch.rand(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch))
    truth, bound = bf16_bound(ref, x)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = torch.stack(fast(x))
    assert max_rel_error(out, truth) <= bound
