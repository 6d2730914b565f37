#!/usr/bin/env bash
# The one command for a lent GPU machine:  bash scripts/gpu_check.sh OUT_DIR
#
# Sized for one 10-minute call on a 16-core H200 machine: every part runs under its own time
# box (seconds below; GPU_CHECK_SCALE=0.5 halves them all; 5 without a GPU), cut short so that
# no part runs past GPU_CHECK_BUDGET_S (default 540; 3000 without a GPU) from the start; the
# report is written after each part, so a call stopped from outside still leaves one.
# GPU_CHECK_PARTS (default: all) names the parts to
# run, e.g. GPU_CHECK_PARTS="ops model" for a second call. Parts, in order:
#   build     FORCE_CUDA=1 pip install -e . --no-build-isolation --no-deps, MAX_JOBS = cores
#             (without a GPU: only when shg_fast._C does not import)
#   env       versions, GPU, clocks, driver (nvidia-ml-py, else nvidia-smi) -> env.json
#   tests-*   the GPU tests (pytest -m gpu) once per forced backend: SHG_FAST_BACKEND=auto,
#             cuda, triton, reference, so no fallback hides a failing kernel -> logs/tests-*.xml
#   sanitize  compute-sanitizer memcheck on a small case of each CUDA kernel
#   ops       each fused op and each residual-block shape of the 8-stack network vs its
#             ATen/cuDNN twin, fp32/TF32/bf16, batch 1 and 64 -> ops.jsonl
#   model     the 8-stack model: eager reference, fast, CUDA graph -> model.jsonl
#   compile   torch.compile of the reference (default mode, boxed) -> compile.jsonl
#   report    summary.json and summary.md from all of the above (scripts/gpu_check_report.py)
# Without a GPU every part that can runs (ops/model as tiny smoke cases), the rest are reported
# as skipped, and the exit status is 0. Exit status 1 when a part that ran failed.
# PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu_check.sh OUT_DIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
[ -w "$out" ] || { echo "gpu_check: $out is not writable" >&2; exit 2; }
[ -n "${GPU_CHECK_PARTS:-}" ] || rm -rf "$out"/parts.tsv "$out"/*.jsonl "$out"/logs  # a partial rerun adds to a full one
mkdir -p "$out/logs"
python=${PYTHON:-python3}
cores=$(nproc 2>/dev/null || echo 4)
start=$(date +%s)
failed=0
has_gpu=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
# Without a GPU the boxes only guard against a hang: a busy 2-core CI machine is slow to start Python.
scale=${GPU_CHECK_SCALE:-$([ "$has_gpu" = 1 ] && echo 1 || echo 5)}
budget=${GPU_CHECK_BUDGET_S:-$([ "$has_gpu" = 1 ] && echo 540 || echo 3000)}

# record NAME STATUS SECONDS NOTE: one line of parts.tsv, echoed.
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$out/parts.tsv"
  echo "== gpu_check: $1: $2 (${3}s) $4"
}

# wanted NAME: whether GPU_CHECK_PARTS asks for part NAME (tests-* are asked for as "tests").
wanted() { [ -z "${GPU_CHECK_PARTS:-}" ] || [[ " $GPU_CHECK_PARTS " == *" ${1%%-*} "* ]]; }

report() { "$python" scripts/gpu_check_report.py "$out" > /dev/null 2>&1 || true; }

# part NAME SECONDS CMD...: run CMD under a time box (no further than the budget's end), its
# output to OUT_DIR/logs/NAME.log and the terminal; then refresh the report.
part() {
  local name=$1 box t0 rc left
  box=$(awk -v s="$2" -v k="$scale" 'BEGIN { printf "%d", s * k }')
  shift 2
  wanted "$name" || return 0
  left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt 15 ]; then
    record "$name" skipped 0 "out of the ${budget}s budget"
    return 0
  fi
  [ "$box" -le "$left" ] || box=$left
  echo "== gpu_check: $name (time box ${box}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$box" "$@" > >(tee "$out/logs/$name.log") 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then
    record "$name" ok "$elapsed" ""
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    record "$name" timeout "$elapsed" "stopped at its ${box}s box; partial results kept"
    failed=1
  else
    record "$name" failed "$elapsed" "exit status $rc, see logs/$name.log"
    failed=1
  fi
  report
}

skip() { if wanted "$1"; then record "$1" skipped 0 "$2"; fi; }

if [ "$has_gpu" = 1 ]; then
  part build 180 env MAX_JOBS="$cores" FORCE_CUDA=1 "$python" -m pip install -e . --no-build-isolation --no-deps
elif ! "$python" -c 'import shg_fast._C' 2>/dev/null; then
  part build 400 env MAX_JOBS="$cores" "$python" -m pip install -e . --no-build-isolation --no-deps
else
  skip build "no GPU and shg_fast._C already imports (the CUDA build is checked by .ci/run on the GPU stack)"
fi

part env 30 "$python" scripts/gpu_check.py env "$out"

for backend in auto cuda triton reference; do
  if [ "$has_gpu" = 1 ]; then
    # The first run compiles the Triton kernels; the others find them in Triton's cache.
    part "tests-$backend" "$([ $backend = auto ] && echo 100 || echo 45)" env SHG_FAST_BACKEND="$backend" "$python" -m pytest -m gpu tests -q -p no:cacheprovider \
      --junitxml="$out/logs/tests-$backend.xml"
  else
    skip "tests-$backend" "no GPU"
  fi
done

if [ "$has_gpu" = 1 ]; then
  part sanitize 45 env PYTHON="$python" SANITIZER_TOOLS=memcheck bash benchmarks/cuda_sanitize.sh
else
  skip sanitize "no GPU"
fi

part ops 100 "$python" scripts/gpu_check.py ops "$out"
part model 60 "$python" scripts/gpu_check.py model "$out"
if [ "$has_gpu" = 1 ]; then
  part compile 60 "$python" scripts/gpu_check.py compile "$out"
else
  skip compile "no GPU (torch.compile of the model takes minutes on a small CPU)"
fi

"$python" scripts/gpu_check_report.py "$out" > /dev/null || failed=1
tar -czf "$out/logs.tar.gz" -C "$out" logs
echo "== gpu_check: $(( $(date +%s) - start ))s in all; results in $out: summary.md, summary.json (everything" \
  "measured), logs.tar.gz (every part's output, the tests' JUnit XML)"
exit $failed
