"""The NumPy lane-level transcriptions of the tensor-core kernels (cpp/cuda/tools/emulate_*.py)
keep agreeing with the reference.

They replay each kernel's bookkeeping -- ldmatrix/mma fragment layouts, lane addresses, shared-memory
pitches and bank groups, cp.async ring slots, zero-fill at the edges, causal/mask coordinates -- in
float64 and assert against np.matmul / reference.attention.  They run without a GPU, so CI keeps
them working; they do not run the CUDA code (that is tests/kernels/test_cuda_kernels.py, on a GPU).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

import pyworkloads.kernels.reference  # noqa: F401  (the installed package, before an emulator puts the checkout on sys.path)

TOOLS = Path(__file__).resolve().parents[2] / "cpp" / "cuda" / "tools"
EMULATORS = sorted(p.name for p in TOOLS.glob("emulate_*.py"))


def test_every_tensor_core_kernel_has_an_emulator():
    assert {"emulate_matmul_mma.py", "emulate_matmul_wgmma.py", "emulate_attention_mma.py", "emulate_attention_mma_async.py",
            "emulate_norms_rows.py"} <= set(EMULATORS)


@pytest.mark.parametrize("script", EMULATORS)
def test_emulator_matches_reference(script, capsys):
    saved = list(sys.path)
    try:
        runpy.run_path(str(TOOLS / script), run_name="__main__")  # raises AssertionError on any mismatch
    finally:
        sys.path[:] = saved
    assert "max" in capsys.readouterr().out.lower()                # it reported its per-case errors
