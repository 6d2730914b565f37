"""torch.compile(fullgraph=True) traces through backend selection for every backend.

Choosing a backend asks whether the extension imported, which kernels it registered and
whether Triton imports; those answers must reach Dynamo as constants (no importlib or
lru_cache in the traced path), or fullgraph=True fails. The eager Dynamo backend is used, so
no code is generated: this checks the tracing, on both supported torch versions.
"""

import pytest
import torch

from shg_fast import _extension, backends
from shg_fast.folding import FoldedResidual
from shg_fast.ops import decode_heatmaps, residual_block, upsample_add
from shg_fast.reference import Residual
from .helpers import randomize_bn


class Tail(torch.nn.Module):
    """A residual block, an upsampled branch added, the maps decoded: every op family once."""

    def __init__(self, block: FoldedResidual, backend: str | None):
        super().__init__()
        self.block = block
        self.backend = backend

    def forward(self, x, low):
        y = residual_block(x, self.block, backend=self.backend)
        y = upsample_add(low, y, backend=self.backend)
        return y, *decode_heatmaps(y, backend=self.backend)


CASES = [("cpu", None), ("cpu", "cpu"), ("cpu", "reference"),
         pytest.param("cuda", None, marks=pytest.mark.gpu), pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
         pytest.param("cuda", "triton", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device, backend", CASES, ids=lambda v: str(v or "auto"))
def test_fullgraph_through_dispatch(device, backend, monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    if backend in ("cpu", "cuda") and not _extension.has_kernel("residual_block", backend.upper()):
        pytest.skip(f"the extension has no {backend} kernels here: {_extension.load_error()}")
    block = FoldedResidual.from_module(randomize_bn(Residual(16, 32)).eval()).to(device)
    model = Tail(block, backend)
    x = torch.randn(2, 16, 8, 8, device=device).to(memory_format=torch.channels_last)
    low = torch.randn(2, 32, 4, 4, device=device)
    torch._dynamo.reset()
    with torch.inference_mode():
        got = torch.compile(model, fullgraph=True, backend="eager")(x, low)
        want = model(x, low)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
