#!/usr/bin/env bash
# The CUDA backend's checks for a session that has a GPU (issue 8), in one run of ~3-8 minutes:
#   0. what the machine is (nvidia-smi) and whether pyworkloads._cuda can use it;
#   1. build pyworkloads._cuda (and _kernels) for this GPU's architecture only, CUDA required --
#      or, where the machine has no nvcc, use the extension carried over from the build machine
#      (run(carry=["pyworkloads/_cuda.cpython-311-x86_64-linux-gnu.so"]), compiled for 80/89/90);
#   2. the CUDA tests: tests/kernels/test_cuda_*.py, then the backend-parametrised kernel tests
#      (-k cuda) of tests/kernels/;
#   3. the benchmark (benchmarks/bench_cuda.py) -> benchmarks/results/<device>-<date>.json.
# Every step runs even if an earlier one failed (one GPU session should bring back everything);
# the exit status is non-zero if any failed.  Logs and the JSON are copied to $OUT when set.
#   usage: bash benchmarks/run_gpu_checks.sh [--quick]     (--quick: fewer benchmark repetitions)
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK="${1:-}"
OUTDIR="${OUT:-}"
LOGDIR="${OUTDIR:-build/gpu-logs}"
mkdir -p "$LOGDIR"
failed=()
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "0. machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1 || echo "nvidia-smi unavailable"
CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')"
ARCH="${CUDA_ARCH:-${CAP:-90}}"
python -c "import numpy, torch; print('numpy', numpy.__version__, '| torch', torch.__version__, '| torch.cuda', torch.cuda.is_available())" 2>&1

step "1. build (CMAKE_CUDA_ARCHITECTURES=$ARCH)"
if command -v nvcc >/dev/null 2>&1; then
    nvcc --version | tail -1
    GEN=()
    command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
    if ! { timeout 240 cmake -S . -B build/gpu "${GEN[@]}" -DPYWORKLOADS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
             -DCMAKE_BUILD_TYPE=Release > "$LOGDIR/cmake-configure.log" 2>&1 &&
           timeout 300 cmake --build build/gpu -j"$(nproc)" > "$LOGDIR/cmake-build.log" 2>&1; }; then
        failed+=("build"); tail -30 "$LOGDIR/cmake-configure.log" "$LOGDIR/cmake-build.log"
    else
        grep -ciE "warning" "$LOGDIR/cmake-build.log" | sed 's/^/compiler warnings: /'
    fi
else
    echo "no nvcc on this machine: using the carried pyworkloads/_cuda*.so (if any)"
fi
python - <<'PY' 2>&1 | tee "$LOGDIR/device-status.log"
from pyworkloads import _cuda
n, why = _cuda.device_status()
print(f"_cuda.device_status() = ({n}, {why!r}); runtime {_cuda.runtime_version()}, driver supports {_cuda.driver_version()}")
raise SystemExit(0 if n > 0 else "the CUDA extension sees no device: every GPU test would skip (a driver older than "
                                 "the toolkit? rebuild here with this machine's nvcc)")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("device")

step "2. tests"
timeout 300 python -m pytest tests/kernels/test_cuda_host.py tests/kernels/test_cuda_kernels.py -q -rs -p no:cacheprovider \
    2>&1 | tee "$LOGDIR/pytest-cuda.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("cuda tests")
timeout 240 python -m pytest tests/kernels -q -rs -p no:cacheprovider -k cuda \
    --ignore=tests/kernels/test_cuda_host.py --ignore=tests/kernels/test_cuda_kernels.py \
    2>&1 | tee "$LOGDIR/pytest-kernels-cuda.log" | tail -15
rc="${PIPESTATUS[0]}"
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || failed+=("kernel property tests")    # 5: none selected

step "3. benchmark"
timeout 300 python benchmarks/bench_cuda.py ${QUICK:+--quick} 2>&1 | tee "$LOGDIR/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("benchmark")
if [ -n "$OUTDIR" ]; then cp benchmarks/results/*.json "$OUTDIR"/ 2>/dev/null || true; fi

step "done"
if [ "${#failed[@]}" -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all GPU checks passed (figures above; commit benchmarks/results/*.json)"
