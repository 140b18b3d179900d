#!/usr/bin/env bash
# The C++ kernels under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   dev/sanitize.sh [pytest arguments]     (default: the kernel, dispatch and model tests)
#
# Builds pyworkloads._kernels with PYWORKLOADS_SANITIZE=ON into build/sanitize (the checkout's own
# module is left alone), stages it next to a copy of the package's Python sources in
# build/sanitize/stage, and runs the tests against that copy with the sanitizer runtime preloaded
# (Python itself is not instrumented, so libasan must come first; libstdc++ is preloaded with it so
# that C++ exceptions thrown through the bindings are seen by ASan's interceptors).  Every report
# is fatal.  pytest captures Python's output only (--capture=sys), so a report, written by the
# sanitizer runtime straight to file descriptor 2, reaches the terminal even when it ends the
# process; the output is kept in build/sanitize/pytest.log, and the script fails when pytest
# fails or when the log holds a report (from a child process too).
#
# Needs: gcc with its sanitizer runtimes (libasan, libubsan), CMake, and a Python environment with
# the test dependencies (pip install ".[test]"; pybind11 is installed if missing).  Works from a
# plain checkout or after `pip install .`: the staged copy is imported first either way (python -P
# keeps the checkout off sys.path).  $PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=$root/build/sanitize
stage=$build/stage
log=$build/pytest.log
python=${PYTHON:-python}

# pybind11 is a build requirement only: a `pip install .` leaves it out of the environment
if ! "$python" -m pybind11 --cmakedir > /dev/null 2>&1; then
    "$python" -m pip install --quiet "pybind11>=2.12"
fi
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
mkdir -p "$build"
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPYWORKLOADS_SANITIZE=ON \
    -DPYWORKLOADS_CUDA=OFF -DPython_EXECUTABLE="$(command -v "$python")" \
    -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" > "$build/configure.log" \
    || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" --target _kernels

# the package's Python sources with the sanitized module in place of any other build
rm -rf "$stage"
mkdir -p "$stage"
(cd "$root" && find pyworkloads -name '*.py' -not -path '*/__pycache__/*' -print0 \
    | xargs -0 cp --parents -t "$stage")
cp "$build"/_kernels*.so "$stage/pyworkloads/"

export PYTHONPATH=$stage${PYTHONPATH:+:$PYTHONPATH}
# Python frees little at exit by design: leak reports would be noise.
export ASAN_OPTIONS=detect_leaks=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The staged copy has no CUDA extension; the CUDA tests skip (they run in the normal test step).
unset PYWORKLOADS_EXPECT_CUDA_BUILD
# Python and the processes the tests start get the runtimes; this script's own tools do not.
sanitized=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)")

"${sanitized[@]}" "$python" -P - "$stage" << 'EOF'
import sys
import pyworkloads._kernels as k
info = k.build_info()
assert k.__file__.startswith(sys.argv[1]) and info.get("sanitizers"), (k.__file__, info)
print(f"sanitized kernels: {k.__file__} ({info['sanitizers']})")
EOF

if [ $# -eq 0 ]; then
    set -- tests/kernels tests/test_dispatch.py tests/models -p no:cacheprovider -q
fi
status=0
"${sanitized[@]}" "$python" -P -m pytest --capture=sys "$@" 2>&1 | tee "$log" || status=$?
if grep -qE "runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer" "$log"; then
    echo "dev/sanitize.sh: sanitizer reports in the output above (kept in $log)" >&2
    status=1
fi
exit $status
