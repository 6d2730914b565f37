"""Finding the CUDA toolkit for the build and checking it has what the sources need.

Loaded by setup.py by path (it is not part of the installed package) and tested by
tests/test_build_tooling.py. torch guesses the toolkit as the folder above the ``nvcc`` on the
PATH, which is wrong when that ``nvcc`` is a wrapper script (say /usr/local/bin/nvcc running
/usr/local/cuda-13.0/bin/nvcc); here nvcc itself is asked where it lives.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

#: Headers the CUDA sources and the glue include from the toolkit (nothing from cuBLAS/cuSPARSE).
CUDA_HEADERS = ("cuda_runtime_api.h", "cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "mma.h")


def nvcc_toolkit(nvcc: str) -> str | None:
    """The toolkit root an ``nvcc`` really runs from, asked of nvcc itself (``--dryrun`` prints
    ``TOP=...``), so a wrapper script or a symlink on the PATH leads to the real toolkit."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if match:
        return os.path.realpath(match.group(1).strip())
    real = os.path.realpath(nvcc)  # no TOP line: a plain nvcc (or a symlink to one) in <toolkit>/bin
    return os.path.dirname(os.path.dirname(real))


def find_cuda_home() -> tuple[str | None, str]:
    """The CUDA toolkit root and how it was found: $CUDA_HOME / $CUDA_PATH, else the nvcc on the
    PATH (followed through wrappers), else /usr/local/cuda."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name):
            return os.environ[name], f"${name}"
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        home = nvcc_toolkit(nvcc)
        if home is not None:
            return home, f"the nvcc on the PATH ({nvcc})"
    if os.path.isdir("/usr/local/cuda"):
        return "/usr/local/cuda", "the default location"
    return None, "no nvcc on the PATH, no $CUDA_HOME, no /usr/local/cuda"


def problems(home: str) -> list[str]:
    """What the toolkit at ``home`` lacks for this build (nvcc, libcudart, the headers)."""
    found = []
    if not os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        found.append(f"no executable {home}/bin/nvcc")
    include_dirs = [os.path.join(home, "include"), os.path.join(home, "targets", "x86_64-linux", "include")]
    include_dirs += [d for d in os.environ.get("CUDA_INC_PATH", "").split(os.pathsep) if d]
    missing = [h for h in CUDA_HEADERS if not any(os.path.isfile(os.path.join(d, h)) for d in include_dirs)]
    if missing:
        found.append(f"headers {', '.join(missing)} not found in {', '.join(include_dirs)}")
    if not glob.glob(os.path.join(home, "lib*", "libcudart.so*")):
        found.append(f"no libcudart.so in {home}/lib64 or {home}/lib")
    return found
