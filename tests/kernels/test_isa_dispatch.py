"""The cpp backend's per-ISA builds: every level is compiled, the best one the CPU runs is chosen
(checked against the CPU's own feature list in /proc/cpuinfo), and switching levels works.  The
kernels of each level are checked against the reference by the property tests, which run once per
level this CPU executes (see _kernel_testing.COMPILED)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyworkloads.kernels as K

if "cpp" not in K.available():
    pytest.skip(f"the cpp backend is unavailable: {K.unavailable_reason('cpp')}",
                allow_module_level=True)

from pyworkloads import _kernels  # noqa: E402

X86 = platform.machine().lower() in ("x86_64", "amd64")
# x86-64-v3 and -v4 as the psABI defines them, in /proc/cpuinfo's spelling
V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def cpuinfo_flags() -> set[str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        pytest.skip("no /proc/cpuinfo to compare the CPU's features with")
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no flags")


@pytest.mark.skipif(not X86, reason="the AVX2 and AVX-512 builds exist on x86-64 only")
def test_every_x86_level_is_built_whatever_this_cpu_runs():
    assert [i for i in ("avx512", "avx2", "portable") if _kernels._built(i)] == [
        "avx512", "avx2", "portable"]


@pytest.mark.skipif(not X86, reason="the AVX2 and AVX-512 builds exist on x86-64 only")
def test_levels_this_cpu_runs_agree_with_proc_cpuinfo():
    flags = cpuinfo_flags()
    want = (["avx512"] if V4 <= flags else []) + (["avx2"] if V3 <= flags else []) + ["portable"]
    got = [i for i in K.cpu_isas() if i != "native"]
    assert got == want, (got, sorted(V4 - flags))
    if os.environ.get("PYWORKLOADS_CPU_ISA") is None:
        assert K.get_cpu_isa() == K.cpu_isas()[0]


def test_each_level_reports_its_own_build_and_computes_the_same_product():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 70), dtype=np.float32)
    b = rng.standard_normal((70, 45), dtype=np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    simd = {"avx512": "avx512", "avx2": "avx2+fma", "portable": "portable"}
    for isa in K.cpu_isas():
        with K.use_cpu_isa(isa), K.use_backend("cpp"):
            info = _kernels.build_info()
            assert info["isa"] == isa and K.get_cpu_isa() == isa
            if isa in simd:
                assert info["simd"] == simd[isa]
            np.testing.assert_allclose(K.matmul(a, b), want, rtol=1e-4, atol=1e-4)


def test_unknown_or_unrunnable_levels_are_refused_by_name():
    before = K.get_cpu_isa()
    with pytest.raises(ValueError, match="isa must be one of"):
        K.set_cpu_isa("sse9")
    missing = [i for i in _kernels.ORDER if i not in K.cpu_isas()]
    for isa in missing:
        with pytest.raises(ValueError, match=repr(isa)):
            K.set_cpu_isa(isa)
    assert K.get_cpu_isa() == before


def test_thread_count_reaches_every_level():
    before = K.get_num_threads()
    try:
        K.set_num_threads(1)
        for isa in K.cpu_isas():
            assert _kernels.module(isa).get_num_threads() == 1
    finally:
        K.set_num_threads(before)


def run_info(env_isa: str) -> subprocess.CompletedProcess:
    code = ("import pyworkloads.kernels as K\n"
            "print(K.unavailable_reason('cpp') or K.get_cpu_isa())")
    # the child imports the very package this process imports (installed or a checkout), whatever
    # the working directory holds
    package_root = str(Path(K.__file__).resolve().parents[2])
    env = dict(os.environ, PYWORKLOADS_CPU_ISA=env_isa, PYTHONPATH=package_root)
    return subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=package_root)


def test_environment_variable_picks_the_level_at_import():
    lowest = K.cpu_isas()[-1]
    out = run_info(lowest)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == lowest
    bad = run_info("avx1024")
    assert bad.returncode == 0, bad.stderr
    assert "PYWORKLOADS_CPU_ISA='avx1024'" in bad.stdout and "isa must be one of" in bad.stdout
