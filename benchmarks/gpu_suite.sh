#!/usr/bin/env bash
# The one script for a lent GPU machine (H100 or H200 with its own image: Python 3.12, torch 2.11,
# triton 3.6, nvcc 13.0, compute-sanitizer; no downloads): `bash benchmarks/gpu_suite.sh`.
# Steps in priority order, each under `timeout` with the seconds shown (fewer when the suite's
# budget, SUITE_BUDGET=540 s, ends sooner); a step's results are kept when a later one fails:
#   a  build for sm_90 (pip install -e .), then check that every backend loads     180, 45
#   b  every CUDA and Triton-on-GPU test (pytest -m cuda)                           200
#   c  compute-sanitizer memcheck and racecheck over every CUDA kernel              60, 60
#   d  compiled train steps on the GPU (ReLU, GELU, paper formula, SUGAR modes)     130
#   e  percent of copy bandwidth of every kernel and mode, CUDA against Triton      75
#   f  peak train memory and the largest batch under a memory cap (ResNet-18)       60
#   g  the micro sweep, with the time that remains
# SUITE_STEPS="c d" reruns only those steps (a warm machine keeps the build), each free to use
# what is left of the budget (e.g. SUITE_STEPS=d SUITE_BUDGET=500 to compile every variant of d).
# SUITE_DRY_RUN=1 prints every command instead of running it (CI runs each printed module with
# --dry-run).
# Everything is written to $OUT when set (the device tool copies it back), else results/gpu/:
# suite.log, summary.md (step, status, seconds), tests.xml and each benchmark's .md and .csv.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-results/gpu}"
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/suite.log") 2>&1
TEE_PID=$!

PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 SUGAR_REQUIRE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PATH="$PATH:/usr/local/cuda/bin" # compute-sanitizer, where the toolkit keeps it
START=$(date +%s)
DEADLINE=$((START + ${SUITE_BUDGET:-540}))
STEPS=" ${SUITE_STEPS:-a b c d e f g} "
SUMMARY=()
FAILED=0

# box SECONDS: SECONDS, or what is left of the budget if that is less (or if SUITE_STEPS is set)
box() {
    local left=$((DEADLINE - $(date +%s)))
    [[ -n "${SUITE_STEPS:-}" ]] && echo "$left" || echo $(($1 < left ? $1 : left))
}

# step ID SECONDS CMD...: run CMD under timeout if ID's letter is in SUITE_STEPS; record it
step() {
    local id=$1 limit=$2 t0 rc status cmd
    shift 2
    [[ "$STEPS" == *" ${id%%-*} "* ]] || return 0
    t0=$(date +%s)
    printf -v cmd '%q ' "$@"
    echo
    echo "=== $id (limit $limit s, $((t0 - START)) s into the suite): $cmd"
    if [[ -n "${SUITE_DRY_RUN:-}" ]]; then
        status="dry run"
    elif ((limit < 15)); then
        status="skipped: no time left"
        FAILED=1
    else
        timeout -k 10 "$limit" "$@"
        rc=$?
        case $rc in
            0) status=ok ;;
            124 | 137) status="TIMED OUT" FAILED=1 ;;
            *) status="FAILED (exit $rc)" FAILED=1 ;;
        esac
    fi
    SUMMARY+=("| $id | $status | $(($(date +%s) - t0)) |")
}

echo "=== environment: $(nproc) CPUs; $("$PY" --version 2>&1)"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"

SANITIZE=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --error-exitcode 1 --tool)

step a-build "$(box 180)" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . -q
step a-load "$(box 45)" "$PY" -m benchmarks.gpu_check load
step b-tests "$(box 200)" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests \
    --junitxml="$OUT_DIR/tests.xml"
# one cudaMalloc per tensor (no caching allocator), so memcheck sees every out-of-bounds access
step c-memcheck "$(box 60)" "${SANITIZE[@]}" memcheck "$PY" -m benchmarks.gpu_check workload
step c-racecheck "$(box 60)" "${SANITIZE[@]}" racecheck "$PY" -m benchmarks.gpu_check workload
limit=$(box 130)
step d-compiled "$limit" "$PY" -m benchmarks.compiled --device cuda --results "$OUT_DIR" \
    --max-seconds $((limit > 80 ? limit - 40 : limit / 2))
step e-bandwidth "$(box 75)" "$PY" -m benchmarks.gpu_bandwidth --sizes 26,28 \
    --dtypes float32,bfloat16 --results "$OUT_DIR"
step f-memory "$(box 60)" "$PY" -m benchmarks.memory --device cuda --no-errors \
    --models conv-bn-relu-x6,resnet18 --results "$OUT_DIR"
limit=$(box 600)
step g-micro "$limit" "$PY" -m benchmarks.micro --device cuda --sizes 28:16 \
    --dtypes float32,bfloat16 --compile dynamic --results "$OUT_DIR" \
    --max-seconds $((limit > 60 ? limit - 30 : limit / 2))

{
    echo "GPU suite: $(($(date +%s) - START)) s; steps: ${SUITE_STEPS:-a b c d e f g}"
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | ---: |"
    printf '%s\n' "${SUMMARY[@]}"
} | tee "$OUT_DIR/summary.md"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null # let tee write its last lines
exit "$FAILED"
