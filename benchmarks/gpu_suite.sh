#!/usr/bin/env bash
# The ONE script for a lent GPU (an H200 with its own image: torch 2.11, triton 3.6, nvcc 13.0,
# no package downloads). From the repository root, on that machine:
#
#     bash benchmarks/gpu_suite.sh
#
# 1. builds the extension for sm_90 with the image's torch (pip install --no-build-isolation
#    --no-deps --no-index -e ., TORCH_CUDA_ARCH_LIST=9.0) and checks the CUDA kernels load;
# 2. runs the CUDA and Triton tests (tests/test_triton_gpu.py, and the cuda-marked tests in tests/),
#    the malformed-argument tests of the code ops on CPU and CUDA (tests/test_code_args.py, the
#    CUDA ones also under compute-sanitizer memcheck: corrupt tables must never access memory
#    out of bounds), then compute-sanitizer memcheck and racecheck on benchmarks/sanitize_cuda.py;
# 3. the percent of copy bandwidth of every kernel and mode (benchmarks/gpu_bandwidth.py: float32
#    and bfloat16, 2^24..2^28, issue-11 targets), the full GPU micro sweep (2^28 down to 2^16,
#    float32 and bfloat16), then the memory table;
# 3b. Triton vs CUDA: every kernel (exact forward/backward, bits=8 code forward/backward) through
#    the sugar::triton_* ops and the C++ sugar::* ops, float32 and bfloat16 at 2^26 elements, the
#    same outputs checked, interleaved timings (triton_vs_cuda.csv); autotuning compiles first;
# 4. prints short tables last (%copy per kernel, the largest size, the issue-5 and -11 targets,
#    Triton vs CUDA).
#
# Everything finishes in under 8 minutes: each step runs under `timeout`, with a budget taken from
# what is left of SUITE_BUDGET seconds (default 450); the micro sweep also stops starting new groups
# before its budget ends, so its CSV and plot are kept. Outputs go to $OUT when it is set (the
# device tool brings them back), else to results/gpu/: suite.log (everything printed),
# bandwidth.csv, micro.csv, micro_cuda.png, memory.md. Exit status: 0 when every step passed, 1 otherwise.
#
# SUITE_STEPS picks steps (default "build tests codeargs sanitize triton bandwidth micro memory"): on a
# machine still warm from an earlier call (the built extension is kept), SUITE_STEPS="bandwidth
# micro memory" gives the benchmarks the whole budget. The micro sweep compiles the paper formula with dynamic shapes here (one compile
# per dtype; size hints from 2^28, the first size) to fit the budget; `python -m benchmarks.micro`
# alone uses static shapes (one compile per size).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-results/gpu}"
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/suite.log") 2>&1
TEE_PID=$!
finish() {  # let tee write its last lines before the script ends
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$1"
}

PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="9.0"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export SUGAR_REQUIRE_CUDA=1  # a GPU machine must build the CUDA kernels, never fall back silently
START=$(date +%s)
DEADLINE=$((START + ${SUITE_BUDGET:-450}))
FAILED=()
STEPS=" ${SUITE_STEPS:-build tests codeargs sanitize triton bandwidth micro memory} "
want() { [[ "$STEPS" == *" $1 "* ]]; }

left() { echo $((DEADLINE - $(date +%s))); }
# budget WANT RESERVE: seconds for the next step, leaving RESERVE for the steps after it.
budget() {
    local b=$(($(left) - $2))
    if ((b > $1)); then b=$1; fi
    echo "$b"
}
# step NAME WANT RESERVE CMD...: run CMD under timeout; record a failure (124 = timed out).
step() {
    local name=$1 want=$2 reserve=$3
    shift 3
    local limit
    limit=$(budget "$want" "$reserve")
    echo
    echo "=== $name (limit ${limit} s; $(($(date +%s) - START)) s into the suite)"
    if ((limit < 10)); then
        echo "skipped: no time left"
        FAILED+=("$name(skipped)")
        return 1
    fi
    timeout -k 5 "$limit" "$@"
    local rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "$name: TIMED OUT after ${limit} s"
        FAILED+=("$name(timeout)")
    elif ((rc != 0)); then
        echo "$name: FAILED (exit $rc)"
        FAILED+=("$name")
    fi
    return $rc
}

echo "=== environment"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
timeout 30 "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available()
else 'NO GPU VISIBLE')"

# 1. build (editable install: the extension lands in sugar_kernels/, next to the sources)
if want build; then
    step build 230 200 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . -q
fi
step build-check 30 190 "$PY" -c "
import sugar_kernels as sk
info = sk.build_info()
print(info)
assert info['cuda_compiled'], 'CUDA kernels were not compiled'
assert sk.available_backends('cuda')[0] == 'cuda', sk.available_backends('cuda')
print('backends on cuda:', sk.available_backends('cuda'))
"

# 2. CUDA and Triton tests
if want tests; then
    if [[ -f tests/test_triton_gpu.py ]]; then
        step test-triton-gpu 60 160 "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_gpu.py
    else
        echo
        echo "=== test-triton-gpu: tests/test_triton_gpu.py does not exist yet, skipped"
    fi
    step test-cuda 70 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests \
        --ignore=tests/test_triton_gpu.py
fi

# 2a. malformed arguments to the code ops: every case on CPU and CUDA (errors; on CUDA the
# corrupt table values are clamped by the kernels), the CUDA cases again under memcheck
if want codeargs; then
    step test-code-args 60 140 "$PY" -m pytest -q -p no:cacheprovider tests/test_code_args.py
    if command -v compute-sanitizer > /dev/null; then
        step sanitize-code-args 60 130 compute-sanitizer --tool memcheck --error-exitcode 1 \
            "$PY" -m pytest -q -p no:cacheprovider tests/test_code_args.py -k "cuda and value"
    fi
fi

# 2b. compute-sanitizer memcheck and racecheck on a small workload touching every CUDA kernel
if want sanitize; then
    if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck; do
            step "sanitize-$tool" 60 130 compute-sanitizer --tool "$tool" --error-exitcode 1 \
                "$PY" -m benchmarks.sanitize_cuda
        done
    else
        echo
        echo "=== sanitize: compute-sanitizer not found on this machine, skipped"
        FAILED+=("sanitize(missing)")
    fi
fi

# 3b (run first). Triton vs CUDA, direct op calls: `$PY -c "$TRITON_VS_CUDA" measure CSV`
# measures (and prints the table), `... report CSV` prints the table again.
TRITON_VS_CUDA=$(cat <<'PYEOF'
import sys
from pathlib import Path

import torch

import sugar_kernels as sk
from benchmarks.common import Case, Timer, append_csv, gbps, interleaved, read_csv, text_table
from sugar_kernels import codes, triton_kernels

FIELDS = ["kernel", "dtype", "n", "cuda_ms", "triton_ms", "cuda_gbps", "triton_gbps"]
mode, path = sys.argv[1], sys.argv[2]
if mode == "measure":
    ok, why = triton_kernels.triton_status("cuda")
    assert ok and "cuda" in sk.available_backends("cuda"), (why, sk.available_backends("cuda"))
    n, ops, dev, rows = 1 << 26, torch.ops.sugar, torch.device("cuda"), []
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(n, device=dev, dtype=dtype, generator=gen)
        g = torch.randn(n, device=dev, dtype=dtype, generator=gen)
        key = ("bsilu", 1.67, "all", 8, dev, dtype)
        tables = (*codes.tables(*key), codes.search_table(*key), 8)
        packed = ops.relu_forward_codes(x, *tables)[1]
        s = x.element_size()
        kernels = {  # name: (op name, arguments, bytes moved)
            "exact_fwd": ("relu_forward", (x, "bsilu", 1.67, "all"), 2 * s * n),
            "exact_bwd": ("relu_backward", (g, x, "bsilu", 1.67, "all"), 3 * s * n),
            "codes_fwd_b8": ("relu_forward_codes", (x, *tables), 2 * s * n + n),
            "codes_bwd_b8": ("relu_backward_codes", (g, packed, tables[0], 8), 2 * s * n + n),
        }
        cases = []
        for name, (op, args, _) in kernels.items():
            cuda, triton = getattr(ops, op), getattr(ops, "triton_" + op)
            ref, out = cuda(*args), triton(*args)  # compiles and autotunes the Triton kernel
            for r, o in zip(*(t if isinstance(t, tuple) else (t,) for t in (ref, out))):
                if name == "exact_bwd":  # one rounding of the same float32 math; libm may differ
                    torch.testing.assert_close(o, r, rtol=2e-2, atol=1e-6)
                else:
                    assert torch.equal(o, r), f"{name} {dtype}: Triton and CUDA outputs differ"
            cases += [Case(f"{name}/cuda", lambda f=cuda, a=args: f(*a)),
                      Case(f"{name}/triton", lambda f=triton, a=args: f(*a))]  # fmt: skip
        stats, errors = interleaved(Timer(dev), cases, target_s=0.05, min_reps=10, max_reps=40,
                                    rounds=4, max_case_s=2.0)  # fmt: skip
        assert not errors, errors
        for name, (_, _, nbytes) in kernels.items():
            c, t = stats[f"{name}/cuda"].median_ms, stats[f"{name}/triton"].median_ms
            rows.append({"kernel": name, "dtype": str(dtype)[6:], "n": n, "cuda_ms": c,
                         "triton_ms": t, "cuda_gbps": gbps(nbytes, c),
                         "triton_gbps": gbps(nbytes, t)})  # fmt: skip
        del x, g, packed, tables, cases
        torch.cuda.empty_cache()
    Path(path).unlink(missing_ok=True)
    append_csv(path, rows, FIELDS)
rows = read_csv(path)
print(text_table(
    ["Triton vs CUDA (median)", "dtype", "n", "cuda ms", "triton ms", "triton/cuda", "cuda GB/s",
     "triton GB/s"],
    [[r["kernel"], r["dtype"], f"2^{int(r['n']).bit_length() - 1}", f"{float(r['cuda_ms']):.3f}",
      f"{float(r['triton_ms']):.3f}", f"{float(r['triton_ms']) / float(r['cuda_ms']):.2f}x",
      f"{float(r['cuda_gbps']):.0f}", f"{float(r['triton_gbps']):.0f}"] for r in rows],
))  # fmt: skip
PYEOF
)
if want triton; then
    step triton-vs-cuda 120 210 "$PY" -c "$TRITON_VS_CUDA" measure "$OUT_DIR/triton_vs_cuda.csv"
fi

# 3a. percent of copy bandwidth per kernel and mode (direct op calls), with the issue-11 targets
if want bandwidth; then
    step bandwidth 100 110 "$PY" -m benchmarks.gpu_bandwidth --sizes 24:28 \
        --dtypes float32,bfloat16 --csv "$OUT_DIR/bandwidth.csv"
fi

# 3. benchmarks: the full micro sweep (largest sizes first, so a cut-short run keeps the sizes
# the targets are about), then the memory table
if want micro; then
    micro_limit=$(budget 400 60)
    step micro "$micro_limit" 60 "$PY" -m benchmarks.micro --device cuda --sizes 28:16 \
        --dtypes float32,bfloat16 --compile dynamic --csv "$OUT_DIR/micro.csv" \
        --plot "$OUT_DIR/micro_cuda.png" --max-seconds $((micro_limit > 40 ? micro_limit - 35 : 5))
fi
if want memory; then
    if [[ -f benchmarks/memory.py ]]; then
        step memory 50 25 bash -c \
            "set -o pipefail; '$PY' -m benchmarks.memory | tee '$OUT_DIR/memory.md'"
    else
        echo
        echo "=== memory: benchmarks/memory.py does not exist yet, skipped"
    fi
fi

# 4. the short table, last
echo
echo "=== summary ($(($(date +%s) - START)) s)"
if [[ -s "$OUT_DIR/bandwidth.csv" ]]; then
    timeout 25 "$PY" -m benchmarks.gpu_bandwidth --report "$OUT_DIR/bandwidth.csv"
else
    echo "no bandwidth results"
fi
if [[ -s "$OUT_DIR/micro.csv" ]]; then
    timeout 25 "$PY" -m benchmarks.micro --summarize "$OUT_DIR/micro.csv"
else
    echo "no micro-benchmark results"
fi
if [[ -s "$OUT_DIR/triton_vs_cuda.csv" ]]; then
    timeout 25 "$PY" -c "$TRITON_VS_CUDA" report "$OUT_DIR/triton_vs_cuda.csv"
else
    echo "no Triton vs CUDA results"
fi
if ((${#FAILED[@]})); then
    echo "FAILED steps: ${FAILED[*]}"
    finish 1
fi
echo "all steps passed ($(($(date +%s) - START)) s)"
finish 0
