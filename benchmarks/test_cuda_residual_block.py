"""One residual block per backend on a GPU: the CUDA whole-block kernel against eager PyTorch
(the reference twin) and, where registered, Triton. Skipped without a GPU and a CUDA build.

On a GPU: `pytest benchmarks/test_cuda_residual_block.py --benchmark-json=...`; each round
synchronises, so times are per call including the launch.
"""

import pytest
import torch

from shg_fast import _extension
from shg_fast.backends import BackendUnavailableError
from shg_fast.folding import FoldedResidual
from shg_fast.ops import residual_block
from shg_fast.ops.extension_backend import prepack_for_cuda
from shg_fast.reference import Residual

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _extension.has_kernel("residual_block", "CUDA"),
    reason="needs a CUDA GPU and the extension built with CUDA",
)


@pytest.mark.parametrize("backend", ["cuda", "reference", "triton"])
@pytest.mark.parametrize("size", [64, 32, 16, 8, 4])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_residual_block_256(benchmark, backend, size, batch, dtype):
    torch.manual_seed(0)
    block = prepack_for_cuda(FoldedResidual.from_module(Residual(256, 256).eval()).to(device="cuda", dtype=dtype))
    x = torch.randn(batch, 256, size, size, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    try:
        residual_block(x, block, backend=backend)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))

    def run():
        out = residual_block(x, block, backend=backend)
        torch.cuda.synchronize()
        return out

    with torch.inference_mode():
        out = benchmark(run)
    assert out.shape == x.shape and torch.isfinite(out).all()
