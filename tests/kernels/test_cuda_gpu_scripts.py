"""The GPU session's scripts keep working on a machine without a GPU.

dev/cuda/run_gpu_checks.sh, benchmarks/bench_cuda.py and dev/cuda/cuda_smoke.py only do their real
work where a GPU
is lent (rarely, for a few minutes); a slip in them found there costs that time.  These tests run
the parts that need no GPU: the shell script's syntax and help, the benchmark's row formatting and
target verdicts on synthetic rows, and the smoke run's algorithm filter.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH, DEV = ROOT / "benchmarks", ROOT / "dev" / "cuda"


def load(name, where=BENCH):
    saved = list(sys.path)  # the scripts put the checkout first on sys.path
    try:
        spec = importlib.util.spec_from_file_location(f"_gpu_script_{name}", where / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = saved
    return mod


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_gpu_checks_parses_and_prints_its_help():
    script = DEV / "run_gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "wgmma_tma" in out.stdout and "--only" in out.stdout
    bad = subprocess.run(
        ["bash", str(script), "--no-such-flag"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_run_gpu_checks_keeps_candidates_out_of_shared_steps():
    # an unverified kernel that traps poisons the CUDA context of its process: the shared steps
    # (smoke, cuda-tests, memcheck, racecheck) must leave every candidate out
    text = (DEV / "run_gpu_checks.sh").read_text()
    assert 'cuda_smoke.py --skip-algos "$SKIP_CANDIDATES"' in text
    assert text.count('--skip-algos "$SKIP_CANDIDATES"') == 3
    assert 'test_cuda_kernels.py -k "$NOT_CANDIDATES"' in text
    assert '--exclude-algos "$FAILED_CANDIDATES"' in text  # the benchmark skips the broken ones
    assert "--exclude-algos" in (BENCH / "bench_cuda.py").read_text()
    assert "CANDIDATES=(" in text


# the matmul algorithms that have passed run_gpu_checks.sh on a GPU (benchmarks/README.md records
# the
# run); a new one is a candidate until it has, and moves here when it has
VERIFIED_MATMUL = {"auto", "naive", "tiled", "mma", "wgmma", "wgmma_direct", "wgmma_tma"}


def test_every_unverified_matmul_algorithm_is_a_candidate():
    _cuda = pytest.importorskip("pyworkloads._cuda", reason="the CUDA extension is not built here")
    text = (DEV / "run_gpu_checks.sh").read_text()
    cands = set(text.split("CANDIDATES=(", 1)[1].split(")", 1)[0].split())
    assert cands == set(_cuda.ALGORITHMS["matmul"]) - VERIFIED_MATMUL


def matmul_row(algo, kernel, ratio, status="ok"):
    return {
        "op": "matmul",
        "case": "4096x4096x4096",
        "dtype": "bf16",
        "algo": algo,
        "kernel": kernel,
        "status": status,
        "ours_tflops": 800 * ratio,
        "ours_pct_of_roofline": 80 * ratio,
        "ours_vs_baseline": ratio,
        "baseline": "cuBLAS torch.matmul",
        "ours_ms": 0.2 / ratio,
        "rel_err_vs_baseline": 1e-3,
        "correct": status == "ok",
    }


def norm_row(algo, call_pct, kernel_pct=None, devarray_pct=None):
    r = {
        "op": "rms_norm",
        "case": "16384x4096",
        "dtype": "bf16",
        "algo": algo,
        "status": "ok",
        "ours_gbs": 48 * call_pct,
        "ours_pct_of_roofline": call_pct,
        "ours_vs_baseline": 1.0,
        "baseline": "torch rms_norm",
        "ours_ms": 0.1,
        "rel_err_vs_baseline": 1e-3,
        "correct": True,
    }
    if kernel_pct is not None:
        r.update({"ours_kernel_ms": 0.07, "ours_kernel_pct_of_roofline": kernel_pct})
    if devarray_pct is not None:
        r.update({"ours_devarray_ms": 0.075, "ours_devarray_pct_of_roofline": devarray_pct})
    return r


def test_bench_rows_name_the_kernel_that_ran():
    bench = load("bench_cuda")
    assert "auto->wgmma " in bench.fmt_row(matmul_row("auto", "wgmma", 0.44))
    line = bench.fmt_row(matmul_row("wgmma_direct", "wgmma_direct", 0.6))
    assert "->" not in line and "wgmma_direct" in line and "60.0% of cuBLAS" in line


def test_bench_targets_use_auto_and_the_best_correct_algorithm():
    bench = load("bench_cuda")
    rows = [
        matmul_row("auto", "wgmma", 0.44),
        matmul_row("wgmma_direct", "wgmma_direct", 0.61),
        matmul_row("wgmma_tma", "wgmma_tma", 0.9, status="wrong"),
    ]  # wrong results never count
    v = bench.summarise_targets(rows, shrink=1)["matmul_bf16_vs_cublas"]
    assert v["achieved"] == pytest.approx(0.44) and not v["met"]
    assert (
        v["best_algo"] == "wgmma_direct"
        and v["best_achieved"] == pytest.approx(0.61)
        and v["best_met"]
    )


def test_bench_norm_target_prefers_kernel_time_then_device_array_calls_then_call_time():
    bench = load("bench_cuda")
    timed = bench.summarise_targets(
        [norm_row("auto", 45.0, 78.0), norm_row("rows", 46.0, 80.0)], shrink=1
    )
    v = timed["norms_vs_hbm_bandwidth"]
    assert (
        v["measured_by"].startswith("kernel time")
        and v["achieved"] == pytest.approx(0.78)
        and v["met"]
    )
    assert v["achieved_call_time"] == pytest.approx(0.45)
    v = bench.summarise_targets([norm_row("auto", 45.0, 78.0, 74.0)], shrink=1)[
        "norms_vs_hbm_bandwidth"
    ]
    assert v["measured_by"].startswith("kernel time") and v["achieved"] == pytest.approx(0.78)
    v = bench.summarise_targets([norm_row("auto", 45.0, devarray_pct=74.0)], shrink=1)[
        "norms_vs_hbm_bandwidth"
    ]
    assert (
        v["measured_by"].startswith("calls with DeviceArray")
        and v["achieved"] == pytest.approx(0.74)
        and v["met"]
    )
    v = bench.summarise_targets([norm_row("auto", 45.0), norm_row("rows", 46.0)], shrink=1)[
        "norms_vs_hbm_bandwidth"
    ]
    assert (
        v["measured_by"].startswith("call time")
        and v["achieved"] == pytest.approx(0.45)
        and not v["met"]
    )
    line = bench.fmt_row(norm_row("auto", 45.0, devarray_pct=74.0))
    assert "DeviceArray args" in line and "74.0% roof" in line


def test_smoke_skips_the_algorithms_it_is_told_to():
    smoke = load("cuda_smoke", DEV)

    class FakeCuda:
        ALGORITHMS = {"matmul": ("auto", "mma", "wgmma", "wgmma_tma"), "rms_norm": ("auto", "rows")}

    s = smoke.Smoke(FakeCuda(), None, {"wgmma_tma", "rows"})
    assert s.algos("matmul") == ["auto", "mma", "wgmma"] and s.algos("rms_norm") == ["auto"]
    assert smoke.Smoke(FakeCuda(), None).algos("matmul") == ["auto", "mma", "wgmma", "wgmma_tma"]


def test_smoke_without_a_device_says_so():
    pytest.importorskip("pyworkloads._cuda", reason="the CUDA extension is not built here")
    from pyworkloads import _cuda

    if _cuda.device_status()[0] > 0:
        pytest.skip("a GPU is present: the smoke run itself is run_gpu_checks.sh's job")
    out = subprocess.run(
        [sys.executable, str(DEV / "cuda_smoke.py"), "--skip-algos", "wgmma_tma"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # from a clean clone the checkout's pyworkloads (first on the script's path) has no built
    # extension (pip put it in site-packages): that is the other clear refusal
    assert out.returncode == 2 and (
        "no usable CUDA device" in out.stdout or "_cuda is not built" in out.stdout
    )
