"""Thread counts of the cpp kernels: results never depend on OpenMP's environment variables or on
how many threads the runtime grants, the count is validated, and it applies to every thread.

OpenMP reads its environment once, when the runtime starts, so each setting runs in a fresh
interpreter (the same package, the same extension) that compares the kernels with the reference
and prints what differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import pyworkloads
import pyworkloads.kernels as K

if "cpp" not in K.available():
    pytest.skip(
        f"the cpp backend is unavailable: {K.unavailable_reason('cpp')}", allow_module_level=True
    )

from pyworkloads import _kernels  # noqa: E402

PACKAGE_ROOT = str(Path(pyworkloads.__file__).resolve().parents[1])

# Runs in the child: every kernel on shapes that use all of its parallel paths (the blocked GEMM
# with a thread grid, whole matrices per thread, the skinny GEMV, tiled and decode attention, the
# norms and GELU over many rows), then llama2-tiny's logits, each against the reference.  Bounds:
# the matmul one is the classical γ(K)·|a|@|b| of a float32 dot product in any order; the others
# are far below the size of an unwritten or wrongly reduced row (O(1) for unit-normal inputs).
CHECKS = """
import numpy as np
import pyworkloads.kernels as K
from pyworkloads.kernels import reference as R
from pyworkloads.models import llama2

rng = np.random.default_rng(0)
bad = []

def same(name, got, want, bound):
    wrong = ~(np.abs(np.asarray(got, np.float64) - want) <= bound)
    if wrong.any():
        rows = int(wrong.reshape(-1, wrong.shape[-1]).any(axis=-1).sum())
        bad.append(f"{name}: {rows} rows wrong")

def mm(a, b):
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    same(f"matmul {a.shape} @ {b.shape}", K.matmul(a, b), want,
         2 * (a.shape[-1] + 2) * 2.0**-24 * np.matmul(np.abs(a), np.abs(b)).astype(np.float64))

with K.use_backend("cpp"):
    a = rng.standard_normal((300, 300), dtype=np.float32)
    mm(a, a)
    mm(a, a.T)
    mm(rng.standard_normal((64, 20, 30), dtype=np.float32),
       rng.standard_normal((64, 30, 40), dtype=np.float32))
    mm(rng.standard_normal((3, 700), dtype=np.float32),
       rng.standard_normal((900, 700), dtype=np.float32).T)
    q = rng.standard_normal((2, 4, 130, 16), dtype=np.float32)
    kv = rng.standard_normal((2, 2, 150, 16), dtype=np.float32)
    for qq in (q, q[:, :, :1]):
        same(f"attention Tq={qq.shape[2]}", K.attention(qq, kv, kv, causal=True),
             R.attention(qq, kv, kv, causal=True), 1e-4)
    x = rng.standard_normal((4000, 64), dtype=np.float32)
    w = rng.standard_normal(64, dtype=np.float32)
    same("rms_norm", K.rms_norm(x, w, 1e-6), R.rms_norm(x, w, 1e-6), 1e-4)
    same("layer_norm", K.layer_norm(x, w, w, 1e-5), R.layer_norm(x, w, w, 1e-5), 1e-4)
    same("gelu", K.gelu(x), R.gelu(x), 1e-5)

m = llama2.from_preset("llama2-tiny")
ids = rng.integers(0, m.config.vocab_size, (2, 32))
want = m(ids)
with K.use_backend("cpp"):
    got = m(ids)
same("llama2-tiny logits", got, want, 1e-4 * max(1.0, float(np.abs(want).max())))
print("; ".join(bad) or "ok")
"""


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing this same package (python -P: not whatever the
    working directory holds); OpenMP variables only as given."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, full.get("PYTHONPATH", "")]).rstrip(":")
    return subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "env, threads",
    [
        ({"OMP_THREAD_LIMIT": "1"}, None),
        ({"OMP_THREAD_LIMIT": "1"}, 2),
        ({"OMP_THREAD_LIMIT": "1", "OMP_NUM_THREADS": "8"}, None),
        ({"OMP_DYNAMIC": "true"}, None),
        ({"OMP_DYNAMIC": "true", "OMP_NUM_THREADS": "16"}, None),
        ({"OMP_NUM_THREADS": "3"}, None),
        ({"OMP_NUM_THREADS": "100000"}, None),
        ({"OMP_MAX_ACTIVE_LEVELS": "1"}, None),
    ],
)
def test_results_do_not_depend_on_openmp_settings(env, threads):
    """A team smaller than planned (OMP_THREAD_LIMIT, OMP_DYNAMIC on a loaded machine) must still
    write every row; absurd requests (OMP_NUM_THREADS=100000) are capped, not obeyed."""
    setup = f"import pyworkloads.kernels as K\nK.set_num_threads({threads})\n" if threads else ""
    r = run_python(setup + CHECKS, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "ok", r.stdout


def limit() -> int:
    return _kernels.max_num_threads()


def test_thread_limit_is_four_per_core():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert limit() == 4 * cores
    assert 1 <= K.get_num_threads() <= limit()


@pytest.mark.parametrize("n", [0, -1, "limit+1", 100_000, 2**31, 2**63])
def test_set_num_threads_refuses_counts_out_of_range(n):
    n = limit() + 1 if n == "limit+1" else n
    r = run_python(f"""
        import numpy as np
        import pyworkloads as pw
        from pyworkloads import _kernels
        for f in (pw.set_num_threads, _kernels.set_num_threads):
            try:
                f({n})
            except ValueError as e:
                print(e)
            else:
                print("accepted")
        a = np.ones((300, 300), np.float32)
        with pw.use_backend("cpp"):
            assert (pw.kernels.matmul(a, a) == 300).all()
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "accepted" not in lines, lines
    for line in lines:
        assert f"positive integer, at most {limit()}" in line and str(n) in line


@pytest.mark.parametrize("n", [1.5, True, "4", None, np.float64(2.0)])
def test_set_num_threads_refuses_non_integers(n):
    before = K.get_num_threads()
    with pytest.raises(TypeError, match="integer"):
        K.set_num_threads(n)
    with pytest.raises(TypeError, match="integer"):
        _kernels.set_num_threads(n)
    assert K.get_num_threads() == before


def test_set_num_threads_applies_to_threads_started_later():
    before = K.get_num_threads()
    seen = []
    try:
        K.set_num_threads(1)
        t = threading.Thread(target=lambda: seen.append((K.get_num_threads(),
                                                          _kernels.get_num_threads())))
        t.start()
        t.join()
        K.set_num_threads(np.int64(2))
        assert K.get_num_threads() == 2
    finally:
        K.set_num_threads(before)
    assert seen == [(1, 1)]


def test_cli_threads_out_of_range_is_a_clear_error():
    r = run_python("""
        import sys
        from pyworkloads.cli import main
        sys.exit(main(["--threads", "100000", "demo", "--models", "llama2"]))
    """)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert f"--threads must be a positive integer, at most {limit()}" in r.stderr
    assert "Traceback" not in r.stderr
