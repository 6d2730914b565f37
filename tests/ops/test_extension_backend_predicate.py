"""The cuda backend's support predicate for residual_block (runs without a GPU: the check is pure Python)."""

import pytest
import torch

from shg_fast.folding import FoldedResidual
from shg_fast.ops import extension_backend
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.reference import Residual

pytestmark = pytest.mark.skipif("cuda" not in RESIDUAL_BLOCK.checks, reason="extension not built: no cuda backend")


@pytest.fixture
def tf32(request):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("tf32", [False], indirect=True)
def test_exact_float32_blocks_are_refused_with_a_reason(tf32):
    block = FoldedResidual.from_module(Residual(16, 16).eval())
    reasons = RESIDUAL_BLOCK.checks["cuda"](torch.randn(1, 16, 4, 4), block)
    assert any("only as TF32" in r and "triton" in r for r in reasons)


@pytest.mark.parametrize("tf32", [True], indirect=True)
@pytest.mark.parametrize("channels,accepted", [(32, True), (16, False), (24, False)])  # C_mid = channels / 2
def test_tf32_blocks_need_channels_in_multiples_of_16(tf32, channels, accepted, monkeypatch):
    """With TF32 allowed the tensor-core path takes float32; odd channel counts would take the scalar loop."""
    monkeypatch.setattr(extension_backend, "_smem_limit", lambda index: 232448)  # an H200's, without a GPU
    block = FoldedResidual.from_module(Residual(channels, channels).eval())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    x = torch.randn(1, channels, 4, 4)
    reasons = [r for r in RESIDUAL_BLOCK.checks["cuda"](x, block) if "float32" in r]
    assert (not reasons) == accepted, reasons
