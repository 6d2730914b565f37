#!/usr/bin/env bash
# Run the CUDA kernels of shg_fast under compute-sanitizer (memcheck, racecheck, synccheck,
# initcheck) on a small driver. For a GPU machine with the extension built with CUDA:
#   FORCE_CUDA=1 pip install -e . --no-build-isolation && bash benchmarks/cuda_sanitize.sh
# Tools: $SANITIZER_TOOLS (default "memcheck racecheck synccheck initcheck"); python: $PYTHON.
# PyTorch's caching allocator hides out-of-bounds accesses inside its pools, so it is disabled.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
[ -x "$sanitizer" ] || { echo "compute-sanitizer not found (put the CUDA toolkit's bin on PATH)" >&2; exit 2; }
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}; do
  echo "== compute-sanitizer --tool $tool"
  # Only our kernels (namespace shg_fast::cuda): torch's own kernels are not under test here.
  if ! "$sanitizer" --tool "$tool" --error-exitcode 99 --kernel-name kns=shg_fast \
      "$python" benchmarks/cuda_sanitize_driver.py; then
    echo "!! $tool reported errors" >&2
    status=1
  fi
done
exit $status
