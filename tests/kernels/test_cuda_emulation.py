"""The NumPy lane-level transcriptions of the tensor-core kernels (dev/cuda/emulate_*.py)
keep agreeing with the reference.

They replay each kernel's bookkeeping -- ldmatrix/mma fragment layouts, lane addresses,
shared-memory
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

TOOLS = Path(__file__).resolve().parents[2] / "dev" / "cuda"
EMULATORS = sorted(p.name for p in TOOLS.glob("emulate_*.py"))


def test_every_tensor_core_kernel_has_an_emulator():
    assert {
        "emulate_matmul_mma.py",
        "emulate_matmul_wgmma.py",
        "emulate_attention_mma.py",
        "emulate_attention_mma_async.py",
        "emulate_norms_rows.py",
    } <= set(EMULATORS)


@pytest.mark.parametrize("script", EMULATORS)
def test_emulator_matches_reference(script, capsys):
    saved = list(sys.path)
    try:
        runpy.run_path(
            str(TOOLS / script), run_name="__main__"
        )  # raises AssertionError on any mismatch
    finally:
        sys.path[:] = saved
    assert "max" in capsys.readouterr().out.lower()  # it reported its per-case errors


def _wgmma_emulator():
    saved = list(sys.path)
    try:
        sys.path.insert(0, str(TOOLS))
        import emulate_matmul_wgmma
    finally:
        sys.path[:] = saved
    return emulate_matmul_wgmma


@pytest.mark.parametrize("mutation", _wgmma_emulator().TMA_MUTATIONS)
def test_protocol_check_catches_planted_bugs(mutation):
    # each mutation is a plausible slip in the mbarrier protocol of matmul_wgmma_tma (a missing or
    # mis-phased wait, a barrier count of 1, a slot released before its batch is done): the protocol
    # check must fail on it, or its pass on the real protocol means nothing
    import numpy as np

    emu = _wgmma_emulator()
    rng = np.random.default_rng(1)
    with pytest.raises(AssertionError):
        for kt in (1, 2, 3, 4, 5, 9, 17):
            emu.check_tma_protocol(kt, rng, trials=100, mutation=mutation)


def test_fold_batch_transcription_agrees_with_the_strided_views():
    import numpy as np

    folded, refused = _wgmma_emulator().check_fold_batch(np.random.default_rng(0))
    assert folded >= 3 and refused >= 4
