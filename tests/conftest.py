"""Shared test helpers.

Parity tests need torch and transformers; they skip with the reason when those are missing
(CI installs both, so there they run).  Committed fixtures under tests/fixtures/ let parity
against stored transformers outputs run without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def require_transformers():
    """Import torch and transformers or skip the calling test, saying why."""
    torch = pytest.importorskip(
        "torch", reason="parity with transformers needs torch (pip install torch==2.13.0)",
        exc_type=ImportError)
    transformers = pytest.importorskip(
        "transformers", reason="parity needs transformers (pip install transformers)",
        exc_type=ImportError)
    torch.manual_seed(0)
    return torch, transformers


@pytest.fixture
def rng():
    return np.random.default_rng(0)
