#!/usr/bin/env bash
# The GPU machine's Python stack on any Linux machine, for CI: print a Python interpreter that has
# Python 3.12, torch 2.11.0 (the registry's plain wheel is the CUDA 13.0 build; it pins Triton
# 3.6.0), numpy 2.x and the test requirements, with shg_fast installed from this checkout and its
# extension built with CUDA (FORCE_CUDA=1) for sm_90a ($TORCH_CUDA_ARCH_LIST, default 9.0a).
#
# The stack is a venv cached outside the checkout, so later runs (and other clones) reuse it:
#   ${SHG_FAST_GPU_STACK_CACHE:-${XDG_CACHE_HOME:-~/.cache}/shg_fast/gpu-stack}/<key>
# <key> is a hash of the Python version and the requirement list below. A cached venv is used only
# when it is complete (its .complete marker is written last) and its versions check out;
# otherwise it is deleted and made again (under a lock, so concurrent runs do not collide).
# The cached venv is never modified afterwards: shg_fast goes into a small venv in
# build/gpu-stack-venv that sees the cached one's packages through a .pth file.
#
#   bash scripts/gpu_stack.sh          the above; prints shg_fast's interpreter
#   bash scripts/gpu_stack.sh venv     only make (or check) the cached stack; prints its interpreter
# Progress goes to stderr; the interpreter path is the only thing printed on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[gpu-stack] $*" >&2; }

TORCH_VERSION=2.11.0
TRITON_VERSION=3.6.0
REQUIREMENTS=("torch==$TORCH_VERSION" "triton==$TRITON_VERSION" "numpy>=2,<3" "setuptools>=64,<82"
              opencv-python-headless h5py tqdm pytest pytest-benchmark hypothesis matplotlib)

# The first of $GPU_STACK_PYTHON, python3.12 on the PATH, pyenv's 3.12 that runs and is 3.12.
python312=
for candidate in ${GPU_STACK_PYTHON:-} "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
  if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    python312=$candidate
    break
  fi
done
if [ -z "$python312" ]; then
  log "ERROR: no working Python 3.12 (the GPU machine runs 3.12): put python3.12 on the PATH or set GPU_STACK_PYTHON"
  exit 1
fi
py_version=$("$python312" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')

key=$(printf '%s\n' "py$py_version" "${REQUIREMENTS[@]}" | sha256sum | cut -c1-16)
cache_root=${SHG_FAST_GPU_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shg_fast/gpu-stack}
stack=$cache_root/$key
mkdir -p "$cache_root"

# The versions a usable stack has (exit 0) or what is wrong with it (exit 1, on stderr).
validate() {
  [ -f "$stack/.complete" ] || { echo "no .complete marker" >&2; return 1; }
  "$stack/bin/python" - "$TORCH_VERSION" "$TRITON_VERSION" <<'PY'
import sys
import numpy, torch, triton
import cv2, h5py, tqdm, pytest, pytest_benchmark, hypothesis, matplotlib, setuptools  # noqa: F401
want_torch, want_triton = sys.argv[1:3]
problems = []
if sys.version_info[:2] != (3, 12):
    problems.append(f"Python {sys.version.split()[0]}")
if torch.__version__.split("+")[0] != want_torch or not (torch.version.cuda or "").startswith("13."):
    problems.append(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
if triton.__version__ != want_triton:
    problems.append(f"triton {triton.__version__}")
if not numpy.__version__.startswith("2."):
    problems.append(f"numpy {numpy.__version__}")
if problems:
    sys.exit("wrong versions: " + ", ".join(problems))
print(f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {triton.__version__}, numpy {numpy.__version__}")
PY
}

exec 9> "$stack.lock"
flock 9
if versions=$(validate 2> "$cache_root/$key.why"); then
  log "reusing the cached stack $stack: $versions"
else
  [ -d "$stack" ] && log "the cached stack $stack is unusable ($(tail -n 1 "$cache_root/$key.why")): making it again"
  rm -rf "$stack"
  log "making $stack (Python $py_version; ${REQUIREMENTS[*]}); torch $TORCH_VERSION is several GB on a first run"
  "$python312" -m venv "$stack" >&2
  "$stack/bin/python" -m pip install -q "${REQUIREMENTS[@]}" >&2
  touch "$stack/.complete"
  versions=$(validate)
  log "made $stack: $versions"
fi
flock -u 9
if [ "${1:-}" = venv ]; then
  echo "$stack/bin/python"
  exit 0
fi

# shg_fast's own venv, in the checkout: the cached packages through a .pth, shg_fast editable.
venv=$PWD/build/gpu-stack-venv
site=$("$stack/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  rm -rf "$venv"
  "$python312" -m venv --without-pip "$venv" >&2
  own_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$site')" > "$own_site/shg_fast_gpu_stack.pth"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
log "building shg_fast with CUDA for $TORCH_CUDA_ARCH_LIST: FORCE_CUDA=1 pip install -e . --no-build-isolation --no-deps"
FORCE_CUDA=1 "$venv/bin/python" -m pip install -q -e . --no-build-isolation --no-deps >&2
"$venv/bin/python" - <<'PY' >&2
from shg_fast import _extension
assert _extension.load_error() is None, _extension.load_error()
for op in ("upsample_add", "decode_heatmaps", "residual_block"):
    assert _extension.has_kernel(op, "CUDA"), f"the extension has no CUDA kernel for {op}"
print("[gpu-stack] shg_fast._C imports with CPU and CUDA kernels registered")
PY
echo "$venv/bin/python"
