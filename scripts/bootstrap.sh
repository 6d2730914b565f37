#!/usr/bin/env bash
# Make a Python environment that can run shg_fast, and print its interpreter's path.
#
# - Uses the active environment (a virtualenv/conda env that python3 runs in) if there is
#   one; otherwise creates .venv (with --system-site-packages, so an installed torch is reused).
# - Installs torch only when it is missing ($TORCH_SPEC, default torch==2.13.0).
# - (Re)installs shg_fast with `pip install -e .[test] --no-build-isolation` when it is not
#   installed or a build input changed since the last install. Nothing is downloaded when
#   everything is present.
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

if ! "$py" -c 'import torch' 2>/dev/null; then
  log "torch is missing: installing ${TORCH_SPEC:-torch==2.13.0}"
  "$py" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" >&2
fi
if ! "$py" -c 'import setuptools, wheel' 2>/dev/null; then
  log "installing setuptools and wheel (build requirements)"
  "$py" -m pip install -q "setuptools>=64" wheel >&2
fi

stamp=build/install-stamp
mkdir -p build
newer=$(find setup.py pyproject.toml csrc -newer "$stamp" -type f 2>/dev/null | head -n 1 || true)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$py" ] || [ -n "$newer" ] \
   || ! "$py" -c 'import shg_fast._C' 2>/dev/null; then
  log "installing shg_fast: pip install -e .[test] --no-build-isolation (builds the extension)"
  "$py" -m pip install -q -e ".[test]" --no-build-isolation >&2
  echo "$py" > "$stamp"
fi
echo "$py"
