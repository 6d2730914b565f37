import subprocess
import sys

BLOCK_EXTENSION = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "shg_fast._C":
            raise ImportError("simulated: extension not built")
sys.meta_path.insert(0, Block())
"""


def run_info(prelude: str = "") -> subprocess.CompletedProcess:
    code = prelude + "\nfrom shg_fast.cli import main\nraise SystemExit(main(['info']))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_info_reports_versions_and_backends():
    result = run_info()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for key in ("torch ", "triton ", "nvcc ", "gpu ", "extension ", "cpu runner ", "backends for cpu tensors:"):
        assert key in out
    assert "reference  available" in out


def test_info_without_the_extension():
    result = run_info(BLOCK_EXTENSION)
    assert result.returncode == 0, result.stderr
    assert "simulated: extension not built" in result.stdout
    assert "reference  available" in result.stdout
    assert "cpu        unavailable" in result.stdout
    assert "direct 3x3 (no Winograd kernel in the extension)" in result.stdout
    assert "1x1 convs on oneDNN (no conv1x1 kernel in the extension)" in result.stdout


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "shg_fast", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "info" in result.stdout
