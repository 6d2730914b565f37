#!/usr/bin/env bash
# The one command for a lent GPU machine (an H100 or H200, no network, one call of at most 10 minutes).
#
# The device call: run, kind left out, timeout_s=540, command:
#   bash scripts/gpu_check.sh --copy-to "$OUT" /tmp/gpu_check
# It brings back summary.json, summary.md and logs.tar.gz (3 files of the 8 allowed), copied into
# $OUT after every part, so a call stopped from outside still returns the last report. The schedule
# below fills 480 s; the other 60 s of timeout_s cover Python's start and the last copy.
# The follow-up call (on the still-warm machine, at once; a fresh one rebuilds first), timeout_s=200:
#   GPU_CHECK_BUDGET_S=170 bash scripts/gpu_check.sh --resume --copy-to "$OUT" /tmp/gpu_check
# runs only the parts the first call did not finish (not ok and not skipped in parts.tsv).
#
#   bash scripts/gpu_check.sh --plan      prints the schedule: one line per part, NAME SECONDS
#
# Parts, in order of value (each under its time box; a part that ends early passes its unused
# seconds to the next; none runs past GPU_CHECK_BUDGET_S, default 480, from the start;
# GPU_CHECK_SCALE scales the boxes; without a GPU the scale is 5 and the budget 3000):
#   build     pip install -e . offline (--no-index, no version check), FORCE_CUDA=1,
#             TORCH_CUDA_ARCH_LIST=9.0a, MAX_JOBS = cores; if the CUDA build fails, again without CUDA
#             (SHG_FAST_SKIP_CUDA_BUILD=1) so that shg_fast.kernels and Triton still run (part: failed)
#   env       versions, GPU, clocks, driver, roofline profile -> env.json
#   tests     one pytest run of the GPU tests (-m gpu -v -rfE, JUnit XML), CUDA-kernel and whole-model
#             files first, pytest-xdist where installed; stopped by SIGINT at its box, so pytest still
#             writes its summary and XML -> logs/tests.log, logs/tests.xml
#   tune      the measured-tactics tuner (issue 28), bf16 then TF32, batch 1 and 64; skipped until
#             `shg-fast tune` exists
#   model     the fast model, bf16, TF32, fp32; eager program and CUDA graph; batch 1 and 64 -> model.jsonl
#   peers     the reference eager (channels_last, cudnn.benchmark), under a CUDA graph, and torch.compile
#             max-autotune (each boxed), batch 1 and 64, bf16 first -> peers.jsonl
#   kernels   per-step device times of the engine's launches (profiler), against each step's PREDICTION
#             -> kernels.jsonl
#   ops       each fused op vs its ATen/cuDNN twin on prepacked weights, bf16 first -> ops.jsonl
#   sanitize  compute-sanitizer memcheck on the CUDA kernels; skipped at once where the device refuses it
# Every part appends its rows as it measures them; summary.json / summary.md are rewritten after each.
# Without a GPU (the CPU rehearsal) the parts that can run do so on tiny smoke cases, the rest are
# recorded as skipped with their reason, and the exit status is 0. Exit status 1 when a part failed.
# PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

# The schedule: NAME SECONDS, in the order the parts run (sum <= 480).
PLAN="build 110
env 10
tests 100
tune 40
model 70
peers 70
kernels 40
ops 25
sanitize 15"
# The tuner's command, once `shg-fast tune` exists (issue 28).
TUNE_ARGS=(tune --dtypes bf16,tf32 --batches 1,64)

copy_to="" resume=0
while [ $# -gt 0 ]; do
  case $1 in
    --plan) echo "$PLAN"; exit 0 ;;
    --copy-to) copy_to=${2:?--copy-to needs a folder}; shift 2 ;;
    --resume) resume=1; shift ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu_check.sh [--plan] [--resume] [--copy-to DIR] OUT_DIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
[ -w "$out" ] || { echo "gpu_check: $out is not writable" >&2; exit 2; }
if [ -n "$copy_to" ]; then
  copy_to=$(mkdir -p "$copy_to" && cd "$copy_to" && pwd) || { echo "gpu_check: cannot create $copy_to" >&2; exit 2; }
fi
python=${PYTHON:-python3}
cores=$(nproc 2>/dev/null || echo 4)
start=$(date +%s)
failed=0
# Parts already done (ok or skipped) in an earlier call: --resume leaves them out.
done_parts=""
if [ "$resume" = 1 ] && [ -f "$out/parts.tsv" ]; then
  done_parts=$(awk -F'\t' '{ s[$1] = $2 } END { for (p in s) if (s[p] == "ok" || s[p] == "skipped") print p }' \
    "$out/parts.tsv" | tr '\n' ' ')
else
  rm -rf "$out"/parts.tsv "$out"/*.jsonl "$out"/env.json "$out"/logs
fi
mkdir -p "$out/logs"
has_gpu=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
# Without a GPU the boxes only guard against a hang: a busy 2-core CI machine is slow to start Python.
scale=${GPU_CHECK_SCALE:-$([ "$has_gpu" = 1 ] && echo 1 || echo 5)}
budget=${GPU_CHECK_BUDGET_S:-$([ "$has_gpu" = 1 ] && echo 480 || echo 3000)}
carry=0  # seconds earlier parts left unused

seconds_of() { echo "$PLAN" | awk -v p="$1" '$1 == p { print $2 }'; }

# record NAME STATUS SECONDS NOTE: one line of parts.tsv, echoed.
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$out/parts.tsv"
  echo "== gpu_check: $1: $2 (${3}s) $4"
}

# wanted NAME: false when --resume found the part done.
wanted() { [[ " $done_parts " != *" $1 "* ]]; }

# report: rewrite summary.json / summary.md (and copy them with the logs to --copy-to).
report() {
  "$python" scripts/gpu_check_report.py "$out" > /dev/null 2>&1 || failed=1
  tar -czf "$out/logs.tar.gz" -C "$out" logs parts.tsv $(cd "$out" && ls env.json *.jsonl 2>/dev/null)
  if [ -n "$copy_to" ]; then
    cp "$out/summary.json" "$out/summary.md" "$out/logs.tar.gz" "$copy_to"/ 2>/dev/null || true
  fi
}

# part NAME [--int] CMD...: run CMD under the part's time box (its seconds, scaled, plus what earlier
# parts left, never past the budget's end), its output to OUT_DIR/logs/NAME.log and the terminal; then
# refresh the report. --int: stop it with SIGINT (pytest then writes its summary), SIGKILL 20 s later.
part() {
  local name=$1 box t0 rc left signal=TERM elapsed
  shift
  if [ "$1" = --int ]; then signal=INT; shift; fi
  wanted "$name" || return 0
  box=$(awk -v s="$(seconds_of "$name")" -v k="$scale" -v c="$carry" 'BEGIN { printf "%d", s * k + c }')
  left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt 5 ]; then
    record "$name" skipped 0 "out of the ${budget}s budget"
    return 0
  fi
  [ "$box" -le "$left" ] || box=$left
  echo "== gpu_check: $name (time box ${box}s)"
  t0=$(date +%s)
  timeout -s "$signal" --kill-after=20 "$box" "$@" > >(tee "$out/logs/$name.log") 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - t0 ))
  carry=$(( box > elapsed ? box - elapsed : 0 ))
  if [ $rc -eq 0 ]; then
    record "$name" ok "$elapsed" ""
  elif [ $rc -eq 4 ]; then  # the part found it cannot run here: its last line says why
    record "$name" skipped "$elapsed" "$(tail -n 1 "$out/logs/$name.log" | cut -c1-200)"
  elif [ $rc -eq 3 ]; then  # it ran, degraded: its last line says how
    record "$name" failed "$elapsed" "$(tail -n 1 "$out/logs/$name.log" | cut -c1-200)"
    failed=1
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ] || { [ "$signal" = INT ] && [ "$elapsed" -ge "$box" ]; }; then
    record "$name" timeout "$elapsed" "stopped at its ${box}s box; partial results kept"
    failed=1
  else
    record "$name" failed "$elapsed" "exit status $rc, see logs/$name.log"
    failed=1
  fi
  report
}

# skip NAME REASON: record the part as skipped; its seconds pass to the next part.
skip() {
  wanted "$1" || return 0
  record "$1" skipped 0 "$2"
  carry=$(awk -v s="$(seconds_of "$1")" -v k="$scale" -v c="$carry" 'BEGIN { printf "%d", s * k + c }')
}

# build_step: the package installed offline for sm_90a; a failed CUDA build is retried without CUDA,
# so that the Triton kernels and the scripts' imports still work (exit 3: built without CUDA).
build_step() {
  local pip=("$python" -m pip install -e . --no-build-isolation --no-deps --no-index --disable-pip-version-check)
  if env MAX_JOBS="$cores" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a "${pip[@]}"; then
    return 0
  fi
  echo "== gpu_check: the CUDA build failed; building without CUDA so that Triton still runs"
  env MAX_JOBS="$cores" SHG_FAST_SKIP_CUDA_BUILD=1 "${pip[@]}" || return 1
  echo "the CUDA build failed (see above); built without CUDA kernels, Triton only"
  return 3
}

# sanitize_step: memcheck on the CUDA kernels, after a probe (20 s at most) of whether the device
# allows compute-sanitizer at all (gVisor machines refuse it): exit 4 with the reason if not.
sanitize_step() {
  local refusal
  if ! refusal=$("$python" scripts/gpu_check.py sanitizer-probe "$out" 2>&1); then
    echo "compute-sanitizer refused here: ${refusal:0:160}"
    return 4
  fi
  env PYTHON="$python" SANITIZER_TOOLS=memcheck bash benchmarks/cuda_sanitize.sh
}
export -f build_step sanitize_step

gpu_tests() {
  # The CUDA-kernel and whole-model tests first (pytest keeps the first of a path given twice); exec, so
  # that the time box's SIGINT reaches pytest itself.
  local xdist=()
  "$python" -c 'import xdist' 2>/dev/null && xdist=(-n "$(( cores < 8 ? cores : 8 ))" --dist load)
  exec "$python" -m pytest -m gpu -v -rfE -p no:cacheprovider --junitxml="$out/logs/tests.xml" "${xdist[@]}" \
    tests/ops/test_cuda_ops.py tests/test_model.py tests/test_engine.py tests
}
export -f gpu_tests
export python cores out

if [ "$has_gpu" = 1 ]; then
  part build bash -c build_step
elif ! "$python" -c 'import shg_fast._C' 2>/dev/null; then
  part build bash -c build_step
else
  skip build "no GPU and shg_fast._C already imports (the CUDA build is checked by .ci/run on the GPU stack)"
fi

part env "$python" scripts/gpu_check.py env "$out"

if [ "$has_gpu" = 1 ]; then
  part tests --int bash -c gpu_tests
else
  skip tests "no GPU"
fi

if "$python" -c 'import sys; from shg_fast.cli import COMMANDS; sys.exit("tune" not in COMMANDS)' 2>/dev/null; then
  part tune "$python" -m shg_fast "${TUNE_ARGS[@]}" --out "$out/tune"
else
  skip tune "no measured-tactics tuner yet (issue 28)"
fi

part model "$python" scripts/gpu_check.py model "$out"
part peers "$python" scripts/gpu_check.py peers "$out"
if [ "$has_gpu" = 1 ]; then
  part kernels "$python" scripts/gpu_check.py kernels "$out"
else
  skip kernels "no GPU (per-step device times need CUDA kernels)"
fi
part ops "$python" scripts/gpu_check.py ops "$out"

if [ "$has_gpu" = 1 ]; then
  part sanitize bash -c sanitize_step
else
  skip sanitize "no GPU"
fi

report
echo "== gpu_check: $(( $(date +%s) - start ))s in all; results in $out: summary.md, summary.json (everything" \
  "measured), logs.tar.gz (every part's output and rows, the tests' JUnit XML)"
exit $failed
