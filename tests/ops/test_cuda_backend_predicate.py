"""The cuda backend's support predicate for residual_block (runs without a GPU: the check is pure Python)."""

import pytest
import torch

from shg_fast.fusion import FoldedResidual
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.reference import Residual

pytestmark = pytest.mark.skipif("cuda" not in RESIDUAL_BLOCK.checks, reason="extension not built: no cuda backend")


def test_float32_blocks_are_refused_with_a_reason():
    block = FoldedResidual.from_module(Residual(16, 16).eval())
    reasons = RESIDUAL_BLOCK.checks["cuda"](torch.randn(1, 16, 4, 4), block)
    assert any("no tensor-core path for float32" in r and "triton" in r for r in reasons)
