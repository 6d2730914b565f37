"""Test helpers: random BN statistics, backends that can run here."""

from shg_fast import _extension
from shg_fast.tolerances import randomize_batchnorm as randomize_bn  # noqa: F401  (global RNG, seeded per test)


def cpu_backends() -> list[str]:
    """Backends that run CPU tensors here (the C++ one only when the extension is built)."""
    return ["reference", "cpu"] if _extension.load()[0] is not None else ["reference"]


def backends_of(op) -> list[str]:
    """The CPU backends (reference, and C++ when built) that ``op`` (a FusedOp) has here."""
    return [b for b in cpu_backends() if b in op.impls]
