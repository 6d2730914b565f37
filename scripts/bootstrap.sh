#!/usr/bin/env bash
# Make a Python environment that can run shg_fast, and print its interpreter's path.
#
# - Uses the active environment (a virtualenv/conda env that python3 runs in) if there is
#   one; otherwise creates .venv (with --system-site-packages, so an installed torch is reused).
# - Installs only what is missing, and says what and why: torch ($TORCH_SPEC, default
#   torch==2.13.0), setuptools (a fresh Python 3.12 venv has none; wheel only for setuptools
#   older than 70.1) and the runtime and test requirements. With everything present it installs
#   nothing and needs no network (the GPU machine has none); when something is missing and
#   cannot be downloaded it says how to bring it as a wheel.
# - (Re)installs shg_fast with `pip install -e . --no-build-isolation --no-deps` when it is not
#   installed or a build input changed since the last install (this builds shg_fast._C).
# Progress goes to stderr; the interpreter path is the only thing printed on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }

base_python=${PYTHON:-python3}
if "$base_python" -c 'import os, sys; sys.exit(0 if (sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX")) else 1)'; then
  py=$(command -v "$base_python")
  log "using the active environment: $py"
else
  if [ ! -x .venv/bin/python ]; then
    log "no active environment: creating .venv"
    "$base_python" -m venv --system-site-packages .venv >&2
  fi
  py=$PWD/.venv/bin/python
  log "using $py"
fi

# install WHY REQUIREMENT...: pip-install only the given requirements, or explain how to bring them.
install() {
  local why=$1
  shift
  log "$why: installing $*"
  if ! "$py" -m pip install -q "$@" >&2; then
    log "ERROR: could not install $* into $py (no network?)."
    log "  On a machine without network, bring the wheels and run: $py -m pip install --no-index --find-links DIR $*"
    exit 1
  fi
}

if ! "$py" -c 'import torch' 2>/dev/null; then
  install "torch is missing" "${TORCH_SPEC:-torch==2.13.0}"
fi

# Build requirements (pyproject.toml): setuptools >= 64; wheel only for setuptools < 70.1, which
# still needs it for bdist_wheel. --no-build-isolation means pip installs neither by itself.
missing=$("$py" - <<'PY'
import importlib.metadata as md

def version(name):
    try:
        return tuple(int(p) for p in md.version(name).split(".")[:2] if p.isdigit())
    except md.PackageNotFoundError:
        return None

setuptools = version("setuptools")
if setuptools is None or setuptools < (64,):
    print("setuptools>=64")
elif setuptools < (70, 1) and version("wheel") is None:
    print("wheel")
PY
)
case $missing in
  setuptools*) install "$py has no setuptools >= 64, needed to build shg_fast._C (a fresh Python 3.12 venv has none)" \
                 "$missing" ;;
  wheel) install "$py has setuptools older than 70.1 (a Python 3.11 venv brings 65.5), which needs wheel to build" \
           wheel ;;
esac

# Runtime and test requirements (setup.py install_requires and extras "test"; a test keeps
# this list in step): module to import, requirement to install when it does not import.
missing=$("$py" - <<'PY'
import importlib.util, sys

needed = {"numpy": "numpy", "cv2": "opencv-python-headless", "h5py": "h5py", "tqdm": "tqdm",
          "pytest": "pytest", "pytest_benchmark": "pytest-benchmark", "hypothesis": "hypothesis",
          "matplotlib": "matplotlib", "triton": "triton>=3.6"}
if not sys.platform.startswith("linux"):
    del needed["triton"]  # setup.py asks for Triton on Linux only
print(" ".join(req for module, req in needed.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
  install "runtime/test requirements missing from $py" $missing
fi

stamp=build/install-stamp
mkdir -p build
newer=$(find setup.py pyproject.toml csrc -newer "$stamp" -type f 2>/dev/null | head -n 1 || true)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$py" ] || [ -n "$newer" ] \
   || ! "$py" -c 'import shg_fast._C' 2>/dev/null; then
  log "installing shg_fast: pip install -e . --no-build-isolation --no-deps (builds the extension)"
  "$py" -m pip install -q -e . --no-build-isolation --no-deps >&2
  echo "$py" > "$stamp"
fi
echo "$py"
