#!/usr/bin/env bash
# The CUDA backend's checks for a session that has a GPU: one command, ~8 minutes on an
# H100 with a 16-core host, every step time-boxed, logs + JSON under $OUT (or build/gpu-logs).
#
#   step          what                                                              expected  cap
#   machine       nvidia-smi, versions; is there a GPU at all                           ~3 s    20 s
#   build         pyworkloads._cuda (+ _kernels) for THIS GPU's arch only (CUDA=ON)  ~40-90 s  300 s
#                 (no nvcc: the carried pyworkloads/_cuda*.so is used)
#   resources     registers / spills / shared memory per kernel: cuobjdump on the    ~3 s     120 s
#                 .so via dev/cuda/resource_usage.py (no cuobjdump: nvcc -Xptxas -v, ~25 s)
#   device        _cuda.device_status(): the extension sees the GPU                    ~2 s    60 s
#   wgmma         matmul versions 4 and 5 (wgmma, wgmma_direct, wgmma_tma = auto)     ~10 s    60 s
#                 vs float64, 4096^3 bf16 timings vs mma (version 3); on failure
#                 the later steps run with PYWORKLOADS_NO_WGMMA=1
#   <candidate>   each kernel in $CANDIDATES (none at present: new kernels not yet   ~8 s     30 s
#                 verified on a GPU), one process each: the same checks, then
#                 tests-<name>: the GPU tests of that algorithm (pytest -k <name>),     ~10 s    45 s
#                 if the checks passed.  A failure is reported on its own line and
#                 never fails the run; the shared steps leave the candidates out, the
#                 benchmark the failed ones
#   smoke         dev/cuda/cuda_smoke.py: every algo x small odd shapes vs reference ~10 s    120 s
#   host-tests    tests/kernels/test_cuda_{host,build,edge_cases}.py                  ~10 s    120 s
#   cuda-tests    tests/kernels/test_cuda_kernels.py (every algo, device arrays)      ~60 s    240 s
#   bench         benchmarks/bench_cuda.py (every algo vs cuBLAS/SDPA/torch norms,  ~2-3 min  240 s
#                 models end to end) -> benchmarks/results/<device>-<date>.json, copied to $OUT
#   kernel-tests  tests/kernels -k cuda (the backend-parametrised property tests)     ~20 s    180 s
#   memcheck      compute-sanitizer --tool memcheck over cuda_smoke.py             ~1-2 min  150 s
#   racecheck     compute-sanitizer --tool racecheck over cuda_smoke.py --quick      ~1 min   120 s
#
# A step's timeout is the smaller of its cap and what is left of the budget ($GPU_CHECKS_BUDGET,
# default 480 s); a step that no longer fits is SKIPPED, the benchmark switches to --quick when
# little time is left.  Every step runs even if an earlier one failed (one GPU session must bring
# back everything); steps that need a GPU are SKIPPED without one (and the run then fails).  The
# summary at the end lists each step's status, seconds and log file.
#
# Logs go to build/gpu-logs/.  With $OUT set (the device tool brings back at most 8 files), after
# EVERY step $OUT is refreshed with: summary.txt, logs.tar.gz (all logs), the benchmark JSON,
# bench.log, smoke.log, pytest-cuda.log, memcheck.log, wgmma.log -- so a run killed at
# the tool's limit still returns everything done so far.
# The interpreter is $PYTHON, else python3 (on the GPU image the one with PyTorch+CUDA); CMake is
# pointed at it, so the extension is built for that Python.
#
# On the device tool: command "bash dev/cuda/run_gpu_checks.sh", timeout_s 560 (the default
# budget is 480 s, so the steps end well inside the tool's 600 s); a rerun of what failed or was
# skipped: "bash dev/cuda/run_gpu_checks.sh --only build,racecheck" (the build is needed again
# on a fresh machine; on the same warm machine --skip build keeps it).
#
#   usage: bash dev/cuda/run_gpu_checks.sh [--quick] [--only step,step] [--skip step,step]
#     --quick        fewer benchmark repetitions; memcheck/racecheck on the --quick smoke subset
#     --only/--skip  a subset of the steps above, e.g. a rerun: --only bench,memcheck
#   env: OUT (where logs go), CUDA_ARCH (override the detected arch), GPU_CHECKS_BUDGET (seconds),
#        FORCE_BUILD=1 (build even without a GPU; by default a GPU-less machine keeps its build)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

QUICK="" ONLY="" SKIP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY=",${2:-},"; shift ;;
        --skip) SKIP=",${2:-},"; shift ;;
        -h|--help) sed -n '2,/^set /{/^set /!p}' "$0"; exit 0 ;;
        *) echo "run_gpu_checks: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
OUTDIR="${OUT:-}"
LOGDIR=build/gpu-logs
rm -rf "$LOGDIR" && mkdir -p "$LOGDIR" || exit 2
[ -z "$OUTDIR" ] || mkdir -p "$OUTDIR" || exit 2
BUDGET="${GPU_CHECKS_BUDGET:-480}"
START=$SECONDS
STEP_NAMES=() STEP_STATUS=()
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1

summary() {
    echo "== summary ($((SECONDS - START)) s; logs in $LOGDIR)"
    for i in "${!STEP_NAMES[@]}"; do printf '  %-13s %s\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}"; done
}
# Refresh $OUT (<= 8 files, each cut to 8 MB): the summary so far, all logs packed, the key logs.
publish() {
    [ -n "$OUTDIR" ] || return 0
    summary > "$LOGDIR/summary.txt"
    tar -czf "$OUTDIR/logs.tar.gz" -C "$LOGDIR" . 2>/dev/null
    local f
    for f in summary.txt bench.log smoke.log pytest-cuda.log memcheck.log wgmma.log; do
        [ -f "$LOGDIR/$f" ] && head -c 8000000 "$LOGDIR/$f" > "$OUTDIR/$f"
    done
    f="$(find "$LOGDIR" -maxdepth 1 -name '*.json' ! -name resource_usage.json -newer "$LOGDIR/machine.log" 2>/dev/null | head -1)"
    if [ -n "$f" ]; then
        find "$OUTDIR" -maxdepth 1 -name '*.json' -delete
        cp "$f" "$OUTDIR/"
    fi
}

say() { echo; echo "== $* ($(date -u +%H:%M:%S), +$((SECONDS - START)) s)"; }
record() { STEP_NAMES+=("$1"); STEP_STATUS+=("$2"); echo "-- $1: $2"; publish; }
wanted() {   # is step $1 selected by --only / --skip?
    { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; } && [[ "$SKIP" != *",$1,"* ]]
}
# run_step NAME CAP LOG CMD...: CMD time-boxed to min(CAP, budget left - 10 s), output to $LOGDIR/LOG,
# its tail shown; records PASS / FAIL (status) / TIMEOUT / SKIPPED.  Returns CMD's status.
run_step() {
    local name="$1" cap="$2" log="$3" t0 rc left limit
    shift 3
    wanted "$name" || return 0
    left=$((BUDGET - (SECONDS - START) - 10))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 15 ]; then record "$name" "SKIPPED (time budget of ${BUDGET} s spent)"; return 0; fi
    say "$name (timeout ${limit} s; log $log)"
    t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$LOGDIR/$log" 2>&1
    rc=$?
    tail -n "${TAIL_LINES:-30}" "$LOGDIR/$log"
    case "$rc" in
        0) record "$name" "PASS ($((SECONDS - t0)) s)" ;;
        124|137) record "$name" "TIMEOUT after ${limit} s (partial log $log)" ;;
        *) record "$name" "FAIL (exit $rc, $((SECONDS - t0)) s, log $log)" ;;
    esac
    return "$rc"
}
needs_gpu() {   # NAME: record a skip when there is no usable device
    wanted "$1" || return 1
    [ "$HAVE_DEVICE" = 1 ] && return 0
    record "$1" "SKIPPED (no usable GPU: $NO_DEVICE_WHY)"
    return 1
}

# ---- machine ----------------------------------------------------------------------------------
HAVE_GPU=0
say "machine"
{
    echo "host: $(uname -srm), $(nproc) cores; $(date -u)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 20 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm --format=csv 2>&1
    else
        echo "nvidia-smi: not installed (no NVIDIA driver on this machine)"
    fi
    if command -v nvcc >/dev/null 2>&1; then nvcc --version | tail -1; else echo "nvcc: not found"; fi
    for tool in cmake ninja cuobjdump compute-sanitizer; do printf '%s: %s\n' "$tool" "$(command -v "$tool" || echo 'not found')"; done
    echo "python: ${PY:-none}"
    timeout 60 "$PY" -c "import sys, numpy, torch; print('Python', sys.version.split()[0], '| numpy', numpy.__version__, '| torch', torch.__version__, '| torch.cuda', torch.cuda.is_available(), '| torch CUDA', torch.version.cuda)" 2>&1
} | tee "$LOGDIR/machine.log"
timeout 20 nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && HAVE_GPU=1
CAP="$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')"
ARCH="${CUDA_ARCH:-${CAP:-90}}"
# Hopper builds as sm_90a (the arch-specific target with wgmma, which matmul versions 4 and 5 need)
[ "$ARCH" = 90 ] && [ -z "${CUDA_ARCH:-}" ] && ARCH=90a
record machine "$([ "$HAVE_GPU" = 1 ] && echo "GPU found, arch $ARCH" || echo "no GPU (device steps will be skipped)")"

# ---- build ------------------------------------------------------------------------------------
SO="$(ls -t pyworkloads/_cuda*.so 2>/dev/null | head -1)"
if wanted build; then
    if ! command -v nvcc >/dev/null 2>&1; then
        record build "SKIPPED (no nvcc here: using ${SO:-no extension at all})"
    elif [ "$HAVE_GPU" != 1 ] && [ -n "$SO" ] && [ "${FORCE_BUILD:-0}" != 1 ]; then
        record build "SKIPPED (no GPU: keeping the existing build $SO; FORCE_BUILD=1 builds anyway)"
    else
        GEN=()
        command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
        PYEXE="$("$PY" -c 'import sys; print(sys.executable)')"
        run_step build 300 build.log bash -c '
            cmake -S . -B build/gpu "${@:3}" -DPYWORKLOADS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$1" -DCMAKE_BUILD_TYPE=Release \
                  -DPython_EXECUTABLE="$2" &&
            cmake --build build/gpu -j"$(nproc)"' build "$ARCH" "$PYEXE" "${GEN[@]}"
        echo "compiler warnings in build.log: $(grep -ci warning "$LOGDIR/build.log")"
        SO="$(ls -t pyworkloads/_cuda*.so 2>/dev/null | head -1)"
    fi
fi

# ---- resources (no GPU needed) ----------------------------------------------------------------
if wanted resources; then
    if [ -z "$SO" ]; then
        record resources "SKIPPED (no built extension)"
    elif "$PY" -c "import sys; sys.path.insert(0, 'dev/cuda'); import resource_usage as r; sys.exit(r.find_cuobjdump() is None)"; then
        run_step resources 120 resource_usage.log "$PY" dev/cuda/resource_usage.py "$SO" --arch "sm_$ARCH" \
            --json "$LOGDIR/resource_usage.json" --check
    elif command -v nvcc >/dev/null 2>&1; then
        echo "(no cuobjdump: compiling the kernels with nvcc -Xptxas -v instead)"
        run_step resources 120 resource_usage.log "$PY" dev/cuda/resource_usage.py --from-source --arch "sm_$ARCH" \
            --json "$LOGDIR/resource_usage.json" --check
    else
        record resources "SKIPPED (neither cuobjdump nor nvcc)"
    fi
fi

# ---- device -----------------------------------------------------------------------------------
HAVE_DEVICE=0 NO_DEVICE_WHY="no GPU on this machine"
if [ -n "$SO" ] || "$PY" -c "import pyworkloads._cuda" 2>/dev/null; then
    say "device"
    timeout 60 "$PY" - > "$LOGDIR/device-status.log" 2>&1 <<'PY'
from pyworkloads import _cuda
n, why = _cuda.device_status()
print(f"_cuda.device_status() = ({n}, {why!r}); runtime {_cuda.runtime_version()}, driver supports {_cuda.driver_version()}")
print(f"algorithms: {dict(_cuda.ALGORITHMS)}")
raise SystemExit(0 if n > 0 else 3)
PY
    rc=$?
    cat "$LOGDIR/device-status.log"
    if [ "$rc" -eq 0 ]; then
        HAVE_DEVICE=1
        record device PASS
    else
        NO_DEVICE_WHY="$(sed -n 's/^_cuda.device_status() = (0, \(.*\)); runtime.*/device_status: \1/p' "$LOGDIR/device-status.log" | cut -c1-140)"
        [ -n "$NO_DEVICE_WHY" ] || NO_DEVICE_WHY="$(tail -1 "$LOGDIR/device-status.log" | cut -c1-140)"
        [ "$HAVE_GPU" = 1 ] && NO_DEVICE_WHY="the extension sees no device although nvidia-smi does (driver older than the toolkit? rebuild here): $NO_DEVICE_WHY"
        record device "FAIL ($NO_DEVICE_WHY)"
    fi
else
    NO_DEVICE_WHY="pyworkloads._cuda is not built"
    record device "FAIL ($NO_DEVICE_WHY)"
fi

# ---- smoke, tests, benchmark --------------------------------------------------------------------
# Kernels written without a GPU, or not yet through the shared steps (memcheck, racecheck), run only
# in their own steps (a trap or fault there would poison the CUDA context of a shared process and
# fail every later check in it).  Verified on a GPU and worth running everywhere: move it out of
# this list (and into VERIFIED_MATMUL in tests/kernels/test_cuda_gpu_scripts.py).
CANDIDATES=()
FAILED_CANDIDATES=""
SKIP_CANDIDATES="$(IFS=,; echo "${CANDIDATES[*]}")"
NOT_CANDIDATES=""                                       # pytest -k "": every test
[ "${#CANDIDATES[@]}" -gt 0 ] && NOT_CANDIDATES="not ($(IFS=' '; echo "${CANDIDATES[*]}" | sed 's/ / or /g'))"
PYTEST=("$PY" -m pytest -rs -p no:cacheprovider --tb=short)
# a test stuck in a hung kernel ends the step after 60 s with its name and stacks (pytest-timeout,
# where installed; "thread": a signal cannot interrupt a blocking CUDA call) instead of eating the cap
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 60 --timeout-method thread)
WGMMA_PY='
import sys, time, numpy as np
from pyworkloads import _cuda
what = sys.argv[1]
rng = np.random.default_rng(0)
try:
    _cuda.matmul(np.ones((8, 8), np.float16), np.ones((8, 8), np.float16), algo="wgmma")
except ValueError as exc:
    print(f"wgmma not available here: {exc}"); raise SystemExit(0)
VERIFIED = ["wgmma", "wgmma_direct", "wgmma_tma", "auto"]   # auto: wgmma_tma on Hopper
algos = VERIFIED if what == "verified" else [what]
for algo in algos:
    for (M, K, N) in [(1, 8, 1), (130, 72, 260), (257, 1000, 513), (128, 4096, 256), (40, 520, 24)]:
        a, b = rng.standard_normal((M, K)).astype(np.float16), rng.standard_normal((K, N)).astype(np.float16)
        got = _cuda.matmul(a, b, algo=algo).astype(np.float64)
        ran = _cuda.matmul_last_kernel()
        want = a.astype(np.float64) @ b.astype(np.float64)
        err = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
        print(f"{algo} fp16 {M}x{K}x{N} (ran {ran}): max err / max |C| = {err:.1e}", flush=True)
        assert err < 4e-3, f"{algo} is wrong"
import torch
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16); b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
ref = a.float() @ b.float()
out = torch.empty(4096, 4096, device="cuda", dtype=torch.bfloat16)
for algo in (["auto", "wgmma_tma", "wgmma", "mma"] if what == "verified" else [what]):
    c = torch.from_dlpack(_cuda.matmul(a, b, algo=algo)).float()
    ran = _cuda.matmul_last_kernel()
    # a candidate that fell back would be timing another kernel; for the verified set only report it
    assert ran == algo or what == "verified", f"algo={algo} ran the {ran} kernel at 4096^3 (a fallback)"
    if ran != algo: print(f"NOTE: algo={algo} ran the {ran} kernel", flush=True)
    err = float((c - ref).abs().max() / ref.abs().max())
    _cuda.matmul(a, b, algo=algo, out=out); torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(10): _cuda.matmul(a, b, algo=algo, out=out)   # into out=: no allocation per call
    torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / 10
    print(f"{algo} bf16 4096^3: {2 * 4096**3 / dt / 1e12:.0f} TFLOP/s, max err / max |C| = {err:.1e}", flush=True)
    assert err < 1e-2, f"{algo} is wrong at 4096^3"
'
# matmul versions 4 and 5 (wgmma) first, in their own process: if they are wrong or fault, the rest
# of the run goes on with PYWORKLOADS_NO_WGMMA=1 (auto = mma), so one broken kernel cannot take
# every later step down.  The unverified candidates then run one process each (a fault or hang
# there touches nothing else; their status never turns wgmma off).
if needs_gpu wgmma; then
    run_step wgmma 60 wgmma.log "$PY" -c "$WGMMA_PY" verified
    [[ "${STEP_STATUS[-1]:-}" == PASS* ]] || { export PYWORKLOADS_NO_WGMMA=1; echo "(wgmma failed: the remaining steps run with PYWORKLOADS_NO_WGMMA=1)"; }
    for cand in "${CANDIDATES[@]}"; do
        # a deadlocked barrier traps after 10 s (mbar_wait), so 30 s is plenty for a broken one too
        run_step "$cand" 30 "$cand.log" "$PY" -c "$WGMMA_PY" "$cand"
        [ -f "$LOGDIR/$cand.log" ] && cat "$LOGDIR/$cand.log" >> "$LOGDIR/wgmma.log"
        if [[ "${STEP_STATUS[-1]:-}" != PASS* ]]; then   # wrong already: its tests would only repeat that,
            FAILED_CANDIDATES+="${FAILED_CANDIDATES:+,}$cand"   # and the benchmark leaves it out
            continue
        fi
        kexpr="$cand"                                   # -k matches substrings: "a" is in "a_b"
        for other in "${CANDIDATES[@]}"; do [[ "$other" != "$cand" && "$other" == *"$cand"* ]] && kexpr+=" and not $other"; done
        run_step "tests-$cand" 45 "pytest-$cand.log" "${PYTEST[@]}" -q tests/kernels/test_cuda_kernels.py -k "$kexpr"
        [ -f "$LOGDIR/pytest-$cand.log" ] && tail -n 15 "$LOGDIR/pytest-$cand.log" >> "$LOGDIR/wgmma.log"
    done
fi
needs_gpu smoke && run_step smoke 120 smoke.log "$PY" dev/cuda/cuda_smoke.py --skip-algos "$SKIP_CANDIDATES"
host_tests=(tests/kernels/test_cuda_host.py tests/kernels/test_cuda_build.py tests/kernels/test_cuda_edge_cases.py)
run_step host-tests 120 pytest-host.log "${PYTEST[@]}" -q "${host_tests[@]}"
# -v: each test's name is printed as it starts, so a killed run shows which one hung
needs_gpu cuda-tests && run_step cuda-tests 240 pytest-cuda.log "${PYTEST[@]}" -v tests/kernels/test_cuda_kernels.py -k "$NOT_CANDIDATES"
if needs_gpu bench; then
    BQ="$QUICK"
    [ $((BUDGET - (SECONDS - START))) -lt 200 ] && BQ=1 && echo "(little time left: benchmark with --quick)"
    # the benchmark stops starting cases 25 s before its step would be killed (and says which it skipped)
    left=$((BUDGET - (SECONDS - START) - 10))
    run_step bench 240 bench.log "$PY" benchmarks/bench_cuda.py ${BQ:+--quick} --budget $(( (left < 240 ? left : 240) - 25 )) \
        ${FAILED_CANDIDATES:+--exclude-algos "$FAILED_CANDIDATES"}
    # the JSON the benchmark just wrote (newer than this run's start marker), for publish()
    find benchmarks/results -name '*.json' -newer "$LOGDIR/machine.log" -exec cp {} "$LOGDIR"/ \; 2>/dev/null
    find "$LOGDIR" -maxdepth 1 -name '*.json' ! -name resource_usage.json | sed 's/^/results: /'
    publish
fi

# ---- compute-sanitizer --------------------------------------------------------------------------
SANITIZER="$(command -v compute-sanitizer)"
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -z "$SANITIZER" ] && [ -x "$c" ] && SANITIZER="$c"
done
SMOKE_Q=()
[ -n "$QUICK" ] && SMOKE_Q=(--quick)
if needs_gpu kernel-tests; then
    run_step kernel-tests 180 pytest-kernels-cuda.log "${PYTEST[@]}" -v tests/kernels -k cuda \
        --ignore=tests/kernels/test_cuda_host.py --ignore=tests/kernels/test_cuda_kernels.py \
        --ignore=tests/kernels/test_cuda_build.py --ignore=tests/kernels/test_cuda_edge_cases.py
    # pytest exits 5 when nothing was selected: not a failure
    [[ "${STEP_STATUS[-1]:-}" == "FAIL (exit 5,"* ]] && STEP_STATUS[-1]="PASS (no tests selected)"
fi
if needs_gpu memcheck; then
    if [ -z "$SANITIZER" ]; then record memcheck "SKIPPED (compute-sanitizer not installed)"
    else run_step memcheck 150 memcheck.log "$SANITIZER" --tool memcheck --leak-check no --print-limit 40 --error-exitcode 99 \
            "$PY" dev/cuda/cuda_smoke.py "${SMOKE_Q[@]}" --skip-algos "$SKIP_CANDIDATES"
    fi
fi
if needs_gpu racecheck; then
    if [ -z "$SANITIZER" ]; then record racecheck "SKIPPED (compute-sanitizer not installed)"
    else run_step racecheck 120 racecheck.log "$SANITIZER" --tool racecheck --print-limit 40 --error-exitcode 99 \
            "$PY" dev/cuda/cuda_smoke.py --quick --no-torch --skip-algos "$SKIP_CANDIDATES"
    fi
fi

# ---- summary ----------------------------------------------------------------------------------
echo
summary | tee "$LOGDIR/summary.txt"
bad=0 cand_ok="" cand_bad=""
for i in "${!STEP_STATUS[@]}"; do
    name="${STEP_NAMES[$i]}" st="${STEP_STATUS[$i]}"
    is_cand=0
    for c in "${CANDIDATES[@]}"; do [[ "$name" == "$c" || "$name" == "tests-$c" ]] && is_cand=1; done
    if [ "$is_cand" = 1 ]; then                    # candidates are reported, never fail the run
        case "$st" in PASS*) cand_ok+=" $name" ;; *) cand_bad+=" $name" ;; esac
        continue
    fi
    case "$st" in FAIL*|TIMEOUT*|"SKIPPED (no usable GPU"*|"SKIPPED (time budget"*) bad=1 ;; esac
done
cand_line="candidates (never fail the run) passed:${cand_ok:- none}; failed or skipped:${cand_bad:- none}"
echo "$cand_line"
verdict="all GPU checks passed (commit benchmarks/results/*.json)"
[ "$bad" = 1 ] && verdict="NOT all GPU checks passed (see the summary; nothing that was skipped was verified)"
echo "$verdict"
if [ -n "$OUTDIR" ]; then publish; printf '%s\n%s\n' "$cand_line" "$verdict" >> "$OUTDIR/summary.txt"; fi
[ "$bad" = 0 ]
