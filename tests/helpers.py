"""Test helpers: random BN statistics, backends that can run here."""

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
