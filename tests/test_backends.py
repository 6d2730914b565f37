import subprocess
import sys

import pytest
import torch

from shg_fast import _extension, backends
from shg_fast.backends import BackendUnavailableError, requested_backend
from shg_fast.ops import decode_heatmaps, upsample_add
from shg_fast.ops.upsample_add import UPSAMPLE_ADD


def _inputs():
    return torch.randn(1, 2, 3, 3), torch.randn(1, 2, 6, 6)


def test_requested_backend_sources(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert requested_backend() == "auto"
    monkeypatch.setenv(backends.ENV_VAR, "Reference")
    assert requested_backend() == "reference"
    assert requested_backend("cpu") == "cpu"  # the argument wins over the environment
    with pytest.raises(ValueError, match="unknown backend 'gpu'.*expected 'auto' or one of"):
        requested_backend("gpu")
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        requested_backend()


def test_env_var_forces_a_backend(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run upsample_add: tensors are on cpu"):
        upsample_add(*_inputs())
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert UPSAMPLE_ADD.candidates(torch.device("cpu"), None, *_inputs()) == ["reference"]


def test_forced_backend_lists_every_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError) as info:
        upsample_add(*_inputs(), backend="cuda")
    message = str(info.value)
    assert "tensors are on cpu" in message
    # The extension's own reason appears exactly when there is one (a CUDA build of torch has none).
    if _extension.load_error():
        assert "not importable" in message
    elif not _extension.has_kernel("upsample_add", "CUDA"):
        assert "without CUDA kernels" in message
    else:
        assert message.count(";") == 0, message
    monkeypatch.setattr(_extension, "load", lambda: (None, "extension shg_fast._C not importable (simulated)"))
    with pytest.raises(BackendUnavailableError, match="tensors are on cpu.*; .*simulated"):
        upsample_add(*_inputs(), backend="cuda")
    with pytest.raises(BackendUnavailableError, match="Triton runs on CUDA tensors"):
        decode_heatmaps(torch.randn(1, 2, 4, 4), backend="triton")


def test_auto_prefers_cpu_extension_on_cpu(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    expected = "cpu" if _extension.load()[0] is not None else "reference"
    assert UPSAMPLE_ADD.select(torch.device("cpu"), None, *_inputs())[0] == expected


@pytest.mark.filterwarnings("ignore::shg_fast.backends.BackendFallbackWarning")  # asserted in test_fallback.py
def test_auto_never_fails_without_the_extension(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(_extension, "load", lambda: (None, "extension shg_fast._C not importable (simulated)"))
    low, skip = _inputs()
    assert UPSAMPLE_ADD.candidates(torch.device("cpu"), None, low, skip) == ["reference"]
    torch.testing.assert_close(upsample_add(low, skip), upsample_add(low, skip, backend="reference"))
    with pytest.raises(BackendUnavailableError, match="simulated"):
        upsample_add(low, skip, backend="cpu")


def test_unimplemented_backend_says_so():
    op = backends.FusedOp("demo")
    op.register("reference", lambda x: x)
    with pytest.raises(BackendUnavailableError, match="no cuda implementation of demo"):
        op.select(torch.device("cpu"), "cuda", torch.zeros(1))
    with pytest.raises(ValueError, match="unknown backend"):
        op.register("tpu", lambda x: x)


def test_dtype_check_reasons():
    check = backends.dtype_check("op", (torch.float32,))
    assert check(torch.zeros(1)) == []
    assert check(torch.zeros(1, dtype=torch.float16), None) == ["op does not support dtype torch.float16"]


def test_import_does_not_initialise_cuda():
    code = "import torch, shg_fast, shg_fast.ops, shg_fast.folding; assert not torch.cuda.is_initialized(); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
