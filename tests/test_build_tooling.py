"""The build and set-up tooling: finding the CUDA toolkit through an nvcc wrapper, checking it,
and the set-up script's list of requirements staying in step with setup.py."""

import ast
import importlib.util
import os
import pathlib
import re
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")


@pytest.fixture
def toolkit():
    spec = importlib.util.spec_from_file_location("cuda_toolkit_under_test", ROOT / "scripts" / "cuda_toolkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_a_wrapper_script_on_the_path_leads_to_the_real_toolkit(toolkit, tmp_path, monkeypatch):
    real_home = toolkit.nvcc_toolkit(NVCC)
    assert os.access(os.path.join(real_home, "bin", "nvcc"), os.X_OK)
    wrapper_bin = tmp_path / "wrapper" / "bin"
    wrapper_bin.mkdir(parents=True)
    (wrapper_bin / "nvcc").write_text(f'#!/bin/sh\nexec {real_home}/bin/nvcc "$@"\n')
    (wrapper_bin / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper_bin}{os.pathsep}{os.environ['PATH']}")
    home, source = toolkit.find_cuda_home()
    assert home == real_home != str(tmp_path / "wrapper")  # torch's own guess would be the wrapper's parent
    assert str(wrapper_bin / "nvcc") in source


def test_cuda_home_from_the_environment_wins(toolkit, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert toolkit.find_cuda_home() == (str(tmp_path), "$CUDA_HOME")


def test_an_incomplete_toolkit_is_described(toolkit, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_INC_PATH", raising=False)
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_runtime_api.h").write_text("")
    found = toolkit.problems(str(tmp_path))
    assert any("bin/nvcc" in p for p in found)
    assert any("libcudart" in p for p in found)
    headers = next(p for p in found if p.startswith("headers"))
    assert "cuda_runtime.h" in headers and "cuda_runtime_api.h," not in headers
    # Headers found through CUDA_INC_PATH count, as torch's build adds that folder.
    monkeypatch.setenv("CUDA_INC_PATH", str(tmp_path / "include"))
    for name in toolkit.CUDA_HEADERS:
        (tmp_path / "include" / name).write_text("")
    assert not any(p.startswith("headers") for p in toolkit.problems(str(tmp_path)))


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_the_toolkit_behind_nvcc_has_what_the_sources_include(toolkit):
    assert toolkit.problems(toolkit.nvcc_toolkit(NVCC)) == []


def _requirement_names(specs):
    return {re.split(r"[<>=;! \[]", spec, maxsplit=1)[0].strip().lower() for spec in specs}


def test_bootstrap_checks_every_requirement_of_setup_py():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    wanted = _requirement_names(kwargs["install_requires"] + kwargs["extras_require"]["test"]) - {"torch"}
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    checked = _requirement_names(re.findall(r'"[a-z_0-9]+": "([^"]+)"', bootstrap))
    assert checked == wanted
