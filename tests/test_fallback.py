"""auto falls back loudly once: a broken extension or a kernel that raises never breaks a call."""

import subprocess
import sys
import warnings

import pytest
import torch

from shg_fast import _extension, backends
from shg_fast.backends import BackendFallbackWarning, FusedOp
from shg_fast.ops import upsample_add, upsample_add_reference
from shg_fast.ops.upsample_add import UPSAMPLE_ADD

from .test_info import BLOCK_EXTENSION

CUDA = torch.device("cuda")  # only names the auto order; every tensor here stays on the CPU


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(backends, "_WARNED", set())
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def _failing_triton_op(name="demo", error=RuntimeError("simulated Triton compile failure")):
    """An op whose triton kernel raises at run time, as a failed compile does."""
    calls = []

    def triton_impl(x):
        calls.append("triton")
        raise error

    op = FusedOp(name)
    op.register("triton", triton_impl)
    op.register("reference", lambda x: x * 2)
    return op, calls


def test_failing_kernel_warns_once_and_falls_back():
    op, calls = _failing_triton_op()
    x = torch.randn(3)
    with pytest.warns(BackendFallbackWarning, match="triton backend of demo failed.*simulated Triton compile"):
        assert torch.equal(op.run(CUDA, None, x), x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert torch.equal(op.run(CUDA, None, x), x * 2)
    assert calls == ["triton", "triton"]  # still tried: a failure may be specific to one shape


def test_each_op_backend_pair_warns_for_itself():
    first, _ = _failing_triton_op("first")
    second, _ = _failing_triton_op("second")
    with pytest.warns(BackendFallbackWarning) as record:
        first.run(CUDA, None, torch.ones(1))
        second.run(CUDA, None, torch.ones(1))
        first.run(CUDA, None, torch.ones(1))
    assert ["demo" not in str(w.message) for w in record] == [True, True]
    assert len(record) == 2


def test_forced_backend_reraises():
    op, _ = _failing_triton_op()
    with pytest.raises(RuntimeError, match="simulated Triton compile failure"):
        op.run(CUDA, "triton", torch.ones(1))


def test_out_of_memory_is_not_hidden():
    op, _ = _failing_triton_op(error=torch.OutOfMemoryError("simulated OOM"))
    with pytest.raises(torch.OutOfMemoryError):
        op.run(CUDA, None, torch.ones(1))


def test_last_backend_errors_propagate():
    op = FusedOp("demo")
    op.register("reference", lambda x: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        op.run(torch.device("cpu"), None, torch.ones(1))


@pytest.mark.skipif(_extension.load()[0] is None, reason="needs the C++ extension")
def test_extension_kernel_failure_falls_back_to_reference(monkeypatch):
    def broken(low, skip):
        raise RuntimeError("simulated kernel crash")

    monkeypatch.setitem(UPSAMPLE_ADD.impls, "cpu", broken)
    low, skip = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 5, 6)
    with pytest.warns(BackendFallbackWarning, match="cpu backend of upsample_add failed"):
        out = upsample_add(low, skip)
    assert torch.equal(out, upsample_add_reference(low, skip))
    with pytest.raises(RuntimeError, match="simulated kernel crash"):
        upsample_add(low, skip, backend="cpu")


def test_broken_extension_warns_once(monkeypatch):
    monkeypatch.setattr(_extension, "load", lambda: (None, "extension shg_fast._C not importable (simulated)"))
    low, skip = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 5, 6)
    with pytest.warns(BackendFallbackWarning, match="cpu backend of upsample_add failed.*simulated") as record:
        out = upsample_add(low, skip)
        upsample_add(low, skip)
    assert len(record) == 1
    assert torch.equal(out, upsample_add_reference(low, skip))


BLOCKED_IMPORT = BLOCK_EXTENSION + """
import torch
from shg_fast.ops import decode_heatmaps, upsample_add, upsample_add_reference
low, skip = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 6, 6)
for _ in range(3):
    assert torch.equal(upsample_add(low, skip), upsample_add_reference(low, skip))
    decode_heatmaps(skip)
print("ok")
"""


def test_extension_that_fails_to_import():
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    warned = [line for line in result.stderr.splitlines() if "BackendFallbackWarning" in line]
    assert len(warned) == 2, result.stderr  # once for each op, not once per call
    assert all("simulated: extension not built" in line for line in warned)
