"""NaN and Inf propagate as in the reference: per image through every runner of the fast model, and
through every backend of every op exactly where its pure-PyTorch twin puts them."""

import os
import subprocess
import sys

import pytest
import torch

from shg_fast import StackedHourglass, reference
from shg_fast.ops import (conv_bn_relu, conv_bn_relu_reference, decode_heatmaps, residual_block,
                          residual_block_reference, upsample_add, upsample_add_reference, winograd_available,
                          winograd_conv3x3, winograd_conv3x3_reference, winograd_weight)
from shg_fast.ops.conv_bn_relu import CONV_BN_RELU
from shg_fast.ops.decode_heatmaps import DECODE_HEATMAPS
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.ops.upsample_add import UPSAMPLE_ADD
from shg_fast.plan import mkldnn_runner_reasons
from shg_fast.tolerances import assert_close_to_reference

from .helpers import backends_of, randomize_bn
from .test_validation import _block

NAN, INF = float("nan"), float("inf")

# NaN arithmetic is the point here: numpy (the Triton interpreter) warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _cpu_and_triton(op) -> list:
    """Every backend of ``op`` that runs CPU tensors here: reference, C++ and Triton (in the interpreter)."""
    return backends_of(op) + [pytest.param("triton", marks=pytest.mark.triton)]


def _poison(x: torch.Tensor) -> torch.Tensor:
    """x with a NaN in image 0, +Inf and -Inf in image 1 (image 2, if any, untouched)."""
    x = x.clone()
    h, w = x.shape[-2:]
    x[0, x.shape[1] - 1, h // 2, w // 3] = NAN
    x[1, 0, h // 3, w // 2] = INF
    x[1, x.shape[1] // 2, h - 1, 0] = -INF
    return x


def _assert_same_nonfinite(out: torch.Tensor, twin: torch.Tensor) -> None:
    """Non-finite exactly where the twin is, and close to it everywhere else."""
    bad = ~torch.isfinite(twin)
    assert bad.any(), "the test input must make the twin's output non-finite somewhere"
    assert torch.equal(~torch.isfinite(out), bad)
    assert_close_to_reference(out.masked_fill(bad, 0), twin.masked_fill(bad, 0), "float32")


# ---- the fast model: every runner, per image -----------------------------------------------------------------

RUNNERS = {
    "mkldnn, Winograd 3x3": {},
    "mkldnn, direct 3x3": {"SHG_FAST_WINOGRAD": "0"},
    "mkldnn, oneDNN 1x1": {"SHG_FAST_CONV1X1": "0"},
    "ops, reference backend": {"SHG_FAST_BACKEND": "reference"},
}


@pytest.mark.parametrize("runner", RUNNERS)
def test_fast_model_propagates_per_image(runner, monkeypatch, one_thread):
    for key, value in RUNNERS[runner].items():
        monkeypatch.setenv(key, value)
    expected_runner = "mkldnn" if runner.startswith("mkldnn") else "ops"
    if expected_runner == "mkldnn" and mkldnn_runner_reasons():
        pytest.skip("; ".join(mkldnn_runner_reasons()))
    ref = randomize_bn(reference.StackedHourglass(2, 16, 5)).eval()
    fast = StackedHourglass(2, 16, 5).eval()
    fast.load_state_dict(ref.state_dict())
    x = _poison(torch.rand(3, 3, 128, 128))
    with torch.no_grad():
        truth, got = ref(x), fast(x)
    assert fast.plan_info()["runner"] == expected_runner
    for t, g in zip(truth, got):
        for image in (0, 1):
            assert not torch.isfinite(t[image]).all(), "premise: the reference propagates"
            assert (~torch.isfinite(g[image]))[~torch.isfinite(t[image])].all()  # wherever the reference is
        assert torch.isfinite(g[2]).all()
        assert_close_to_reference(g[2], t[2], "float32")


# ---- each op against its twin, on every backend ------------------------------------------------------------


@pytest.mark.parametrize("backend", _cpu_and_triton(CONV_BN_RELU))
@pytest.mark.parametrize("stride, k", [(1, 3), (2, 7), (1, 1)])
def test_conv_bn_relu_like_its_twin(backend, stride, k):
    x = _poison(torch.randn(2, 5, 9, 11))
    w, b = torch.randn(6, 5, k, k) / k, torch.randn(6)
    scale, shift = torch.randn(5), torch.randn(5)  # both signs: -Inf*s is +Inf for s < 0
    oh, ow = (9 - 1) // stride + 1, (11 - 1) // stride + 1
    res, up = _poison(torch.randn(2, 6, oh, ow)), torch.randn(2, 6, (oh + 1) // 2, (ow + 1) // 2)
    for extra in ({}, {"residual": res, "upsample": up}):
        kw = dict(stride=stride, in_scale=scale, in_shift=shift, in_relu=True, out_relu=True, **extra)
        _assert_same_nonfinite(conv_bn_relu(x, w, b, backend=backend, **kw), conv_bn_relu_reference(x, w, b, **kw))


@pytest.mark.parametrize("backend", _cpu_and_triton(RESIDUAL_BLOCK))
@pytest.mark.parametrize("cin", [6, 8])  # projection and identity skip
def test_residual_block_like_its_twin(backend, cin):
    block, x, up = _block(cin, 8), _poison(torch.randn(2, cin, 7, 9)), _poison(torch.randn(2, 8, 4, 5))
    for u in (None, up):
        _assert_same_nonfinite(residual_block(x, block, u, backend=backend), residual_block_reference(x, block, u))


@pytest.mark.parametrize("backend", _cpu_and_triton(UPSAMPLE_ADD))
def test_upsample_add_like_its_twin(backend):
    low, skip = _poison(torch.randn(2, 3, 3, 4)), _poison(torch.randn(2, 3, 5, 7))
    _assert_same_nonfinite(upsample_add(low, skip, backend=backend), upsample_add_reference(low, skip))


@pytest.mark.parametrize("backend", _cpu_and_triton(DECODE_HEATMAPS))
def test_decode_heatmaps_like_its_twin(backend):
    hm = _poison(torch.randn(2, 4, 6, 7))
    coords, maxvals = decode_heatmaps(hm, backend=backend)
    twin_coords, twin_maxvals = decode_heatmaps(hm, backend="reference")
    assert torch.equal(coords, twin_coords)
    assert torch.equal(torch.isnan(maxvals), torch.isnan(twin_maxvals)) and torch.isnan(maxvals).any()
    assert torch.equal(maxvals.nan_to_num(0), twin_maxvals.nan_to_num(0)) and torch.isinf(maxvals).any()


# ---- Winograd: a non-finite pixel poisons whole 4x4 output tiles, both instruction sets ---------------------

_WINOGRAD_CASE = """
import sys, torch
from shg_fast.ops import winograd_conv3x3, winograd_weight
x, w, b = torch.load(sys.argv[1])
torch.save([winograd_conv3x3(x, winograd_weight(w), b, relu=r) for r in (False, True)], sys.argv[2])
"""


def _tile_mask(bad_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H, W) mask of the 4x4 output tiles whose 6x6 input window (rows 4t-1 .. 4t+4) holds a bad pixel."""
    mask = torch.zeros(bad_in.shape[0], h, w, dtype=torch.bool)
    for n, y, x in bad_in.nonzero().tolist():
        for ty in range(max(0, -(-(y - 4) // 4)), min((h + 3) // 4, (y + 1) // 4 + 1)):
            for tx in range(max(0, -(-(x - 4) // 4)), min((w + 3) // 4, (x + 1) // 4 + 1)):
                mask[n, 4 * ty:4 * ty + 4, 4 * tx:4 * tx + 4] = True
    return mask


@pytest.mark.skipif(not winograd_available(), reason="the C++ extension is not built")
@pytest.mark.parametrize("isa", ["default", "baseline"])
def test_winograd_propagates_within_the_tiles(isa, tmp_path):
    x = _poison(torch.randn(2, 9, 13, 10)).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(11, 9, 3, 3) / 9, torch.randn(11)
    if isa == "default":
        outs = [winograd_conv3x3(x, winograd_weight(w), b, relu=r) for r in (False, True)]
    else:
        torch.save((x, w, b), tmp_path / "case.pt")
        subprocess.run([sys.executable, "-c", _WINOGRAD_CASE, str(tmp_path / "case.pt"), str(tmp_path / "out.pt")],
                       env={**os.environ, "SHG_FAST_CPU_BASELINE": "1"}, check=True, timeout=120)
        outs = torch.load(tmp_path / "out.pt")
    tiles = _tile_mask(~torch.isfinite(x).all(dim=1), 13, 10)[:, None].expand(-1, 11, -1, -1)
    for out, relu in zip(outs, (False, True)):
        twin = winograd_conv3x3_reference(x, w, b, relu=relu)
        bad = ~torch.isfinite(twin)
        assert bad.any() and (~torch.isfinite(out))[bad].all()  # wherever the twin is non-finite
        assert torch.isfinite(out[~tiles]).all()  # and only within the tiles that read the bad pixel
        assert_close_to_reference(out[~tiles], twin[~tiles], "float32")


@pytest.mark.skipif(not winograd_available(), reason="the C++ extension is not built")
def test_winograd_refuses_inputs_that_require_grad():
    x, w = torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(5, 4, 3, 3)
    with pytest.raises(RuntimeError, match="inference only"):
        winograd_conv3x3(x, winograd_weight(w))
    with torch.no_grad():
        assert winograd_conv3x3(x, winograd_weight(w)).shape == (1, 5, 8, 8)
