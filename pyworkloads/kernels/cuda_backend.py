"""Adapter for the ``cuda`` backend: the compiled ``pyworkloads._cuda`` extension.

The extension is built whenever CMake finds a CUDA compiler; it imports on machines without a
GPU, and this adapter then reports the backend unavailable with the driver's reason.
"""
from __future__ import annotations

from .. import _cuda

_EXPORTED = ("matmul", "attention", "rms_norm", "layer_norm")


def unavailable_reason() -> str | None:
    n, why = _cuda.device_status()
    return None if n > 0 else f"no usable CUDA device ({why})"


def __getattr__(name):
    if name in _EXPORTED and hasattr(_cuda, name):
        return getattr(_cuda, name)
    raise AttributeError(name)
