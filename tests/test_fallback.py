"""auto falls back loudly once on CPU tensors (a broken extension or a kernel that raises never breaks
a call there); on CUDA tensors a kernel that raises is reported, never hidden."""

import subprocess
import sys
import warnings

import pytest
import torch

from shg_fast import _extension, backends
from shg_fast.backends import BackendFallbackWarning, FusedOp, KernelLaunchError
from shg_fast.ops import upsample_add, upsample_add_reference
from shg_fast.ops.upsample_add import UPSAMPLE_ADD

from .test_info import BLOCK_EXTENSION

CUDA = torch.device("cuda")  # only names the auto order; every tensor here stays on the CPU
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(backends, "_WARNED", set())
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def _failing_triton_op(name="demo", error=RuntimeError("simulated Triton compile failure"), backend="triton"):
    """An op whose ``backend`` kernel raises at run time, as a failed compile does."""
    calls = []

    def failing_impl(x):
        calls.append(backend)
        raise error

    op = FusedOp(name)
    op.register(backend, failing_impl)
    op.register("reference", lambda x: x * 2)
    return op, calls


NEEDS_EXTENSION = pytest.mark.skipif(_extension.load()[0] is None, reason="needs the C++ extension")


@NEEDS_EXTENSION
def test_failing_cpu_kernel_warns_once_and_falls_back():
    # named after a real op: the cpu backend only runs ops whose kernel the extension has
    op, calls = _failing_triton_op("upsample_add", RuntimeError("simulated kernel crash"), backend="cpu")
    x = torch.randn(3)
    with pytest.warns(BackendFallbackWarning, match="cpu backend of upsample_add failed.*simulated kernel crash"):
        assert torch.equal(op.run(CPU, None, x), x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert torch.equal(op.run(CPU, None, x), x * 2)
    assert calls == ["cpu", "cpu"]  # still tried: a failure may be specific to one shape


def test_failing_kernel_on_cuda_raises_with_op_and_backend():
    op, calls = _failing_triton_op()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KernelLaunchError, match="demo failed on the triton backend.*simulated Triton compile"):
            op.run(CUDA, None, torch.randn(3))
    assert calls == ["triton"]


@NEEDS_EXTENSION
def test_each_op_backend_pair_warns_for_itself():
    first, _ = _failing_triton_op("upsample_add", backend="cpu")
    second, _ = _failing_triton_op("decode_heatmaps", backend="cpu")
    with pytest.warns(BackendFallbackWarning) as record:
        first.run(CPU, None, torch.ones(1))
        second.run(CPU, None, torch.ones(1))
        first.run(CPU, None, torch.ones(1))
    assert len(record) == 2
    assert "upsample_add" in str(record[0].message) and "decode_heatmaps" in str(record[1].message)


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
