"""Test helpers: random BN statistics, backends that can run here."""

import pytest
import torch
from torch import nn

from shg_fast import _extension


def randomize_bn(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm in ``module`` non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
    return module


def cpu_backends() -> list[str]:
    """Backends that run CPU tensors here (the C++ one only when the extension is built)."""
    return ["reference", "cpu"] if _extension.load()[0] is not None else ["reference"]


def backends_of(op) -> list[str]:
    """The CPU backends (reference, and C++ when built) that ``op`` (a FusedOp) has here."""
    return [b for b in cpu_backends() if b in op.impls]


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convs gain nothing from more, and a shared CI machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
