"""The triton backend's registration: ops, fake kernels, selection, import guard, torch.compile."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.testing._internal.optests.generate_tests import ALL_TEST_UTILS

from shg_fast.backends import BackendUnavailableError
from shg_fast.folding import FoldedResidual
from shg_fast.ops import decode_heatmaps, residual_block, upsample_add
from shg_fast.ops.conv_bn_relu import CONV_BN_RELU
from shg_fast.ops.triton_backend import IMPORT_ERROR
from shg_fast.reference import Residual

from ..helpers import randomize_bn

pytestmark = pytest.mark.skipif(IMPORT_ERROR is not None, reason=f"triton backend unavailable: {IMPORT_ERROR}")


def test_auto_on_cpu_never_picks_triton():
    x, w = torch.randn(1, 3, 4, 4), torch.randn(2, 3, 1, 1)
    assert "triton" not in CONV_BN_RELU.candidates(x.device, "auto", x, w)


def test_a_broken_triton_only_disables_the_backend():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, shg_fast.ops as ops\n"
        "from shg_fast.ops.triton_backend import IMPORT_ERROR\n"
        "assert IMPORT_ERROR and 'failed to import' in IMPORT_ERROR, IMPORT_ERROR\n"
        "low, skip = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 4, 4)\n"
        "assert torch.equal(ops.upsample_add(low, skip), ops.upsample_add_reference(low, skip))\n"
        "try:\n"
        "    ops.upsample_add(low, skip, backend='triton')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("BackendUnavailableError") and "triton" in result.stdout.lower()


def small_inputs(device):
    low, skip = torch.randn(2, 3, 3, 4, device=device), torch.randn(2, 3, 5, 7, device=device)
    x = torch.randn(2, 19, 5, 7, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(8, 19 + 3, 3, 3, device=device)
    up = torch.randn(2, 8, 3, 4, device=device)
    return low, skip, x, w, up


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_ops_pass_opcheck(device):
    # In the interpreter the AOT-dispatch tests trace the kernel launch on fake tensors and
    # fails on their data pointers (docs/DESIGN.md); it runs on a GPU.
    utils = [u for u in ALL_TEST_UTILS if device == "cuda" or not u.startswith("test_aot_dispatch")]
    low, skip, x, w, up = small_inputs(device)
    ops = torch.ops.shg_fast
    torch.library.opcheck(ops.upsample_add_triton, (low.requires_grad_(), skip), test_utils=utils)
    flipped = torch.randn(skip.shape, device=device)
    torch.library.opcheck(ops.decode_heatmaps_triton, (skip, flipped, [2, 1, 0]), test_utils=utils)
    torch.library.opcheck(ops.decode_heatmaps_triton, (skip, None, []), test_utils=utils)
    scale, shift = torch.rand(19, device=device) + 0.5, torch.randn(19, device=device)
    x2 = torch.randn(2, 3, 5, 7, device=device)
    torch.library.opcheck(ops.conv_bn_relu_triton,
                          (x, w, torch.randn(8, device=device), x2, scale, shift, None, up, 1, 1, True, True, False),
                          test_utils=utils)


class SmallHourglassTail(nn.Module):
    """A residual block whose output gets an upsampled branch added, then decoded."""

    def __init__(self, block: FoldedResidual):
        super().__init__()
        self.block = block

    def forward(self, x, low):
        y = residual_block(x, self.block, backend="triton")
        y = upsample_add(low, y, backend="triton")
        return decode_heatmaps(y, backend="triton")


@pytest.mark.gpu
def test_compiles_without_graph_breaks():
    block = FoldedResidual.from_module(randomize_bn(Residual(16, 32)).eval()).to("cuda")
    model = SmallHourglassTail(block)
    x = torch.randn(2, 16, 8, 8, device="cuda").to(memory_format=torch.channels_last)
    low = torch.randn(2, 32, 4, 4, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    coords, maxvals = compiled(x, low)
    ref_coords, ref_max = model(x, low)
    assert torch.equal(coords, ref_coords)
    torch.testing.assert_close(maxvals, ref_max)


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="Triton runs on CUDA tensors"):
        residual_block(torch.randn(1, 4, 3, 3), FoldedResidual.from_module(Residual(4, 4).eval()), backend="triton")


def test_dynamo_traces_the_dispatch_without_graph_breaks():
    """fullgraph=True through backend selection and the triton ops (eager backend: no codegen here)."""
    block = FoldedResidual.from_module(randomize_bn(Residual(16, 32)).eval())
    model = SmallHourglassTail(block)
    x = torch.randn(2, 16, 8, 8).to(memory_format=torch.channels_last)
    low = torch.randn(2, 32, 4, 4)
    torch._dynamo.reset()
    coords, maxvals = torch.compile(model, fullgraph=True, backend="eager")(x, low)
    ref_coords, ref_max = model(x, low)
    assert torch.equal(coords, ref_coords) and torch.equal(maxvals, ref_max)


def test_split_k_workspace_is_reused_and_grows(monkeypatch):
    """The public conv's split-K partial sums live in one cached buffer per (device, stream), not one per call."""
    from shg_fast.ops import conv_bn_relu, conv_bn_relu_reference, triton_backend
    from shg_fast.tolerances import assert_close_to_reference

    allocated = []
    real = triton_backend._workspace

    def spy(numel, device):
        out = real(numel, device)
        allocated.append((numel, out.untyped_storage().data_ptr(), out.untyped_storage().nbytes(), out))  # kept alive
        return out

    monkeypatch.setattr(triton_backend, "_workspace", spy)
    triton_backend.clear_workspaces()
    x, w = torch.randn(1, 256, 4, 5), torch.randn(24, 256, 1, 1) / 16  # 16 K steps of 16 channels: split
    first = conv_bn_relu(x, w, backend="triton")
    again = conv_bn_relu(x, w, backend="triton")
    conv_bn_relu(torch.randn(1, 256, 5, 5), w, backend="triton")
    from shg_fast.kernels.conv_bn_relu import conv_config

    split = conv_config(20, 256, 0, 24, 1, 1, 4, False)["SPLIT_K"]
    assert split > 1 and conv_config(25, 256, 0, 24, 1, 1, 4, False)["SPLIT_K"] == split
    assert [a[0] for a in allocated] == [split * 20 * 24, split * 20 * 24, split * 25 * 24]
    assert allocated[0][1] == allocated[1][1]  # the same memory on the second call
    assert allocated[2][2] >= 4 * split * 25 * 24 and len(triton_backend._WORKSPACES) == 1  # grown; one kept
    assert torch.equal(first, again)
    assert_close_to_reference(first, conv_bn_relu_reference(x.double(), w.double()), "float32")
    triton_backend.clear_workspaces()
    assert not triton_backend._WORKSPACES
