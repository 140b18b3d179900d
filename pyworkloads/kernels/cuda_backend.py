"""Adapter for the ``cuda`` backend: the compiled ``pyworkloads._cuda`` extension.

The extension is built whenever CMake finds a CUDA compiler; it imports on machines without a
GPU, and this adapter then reports the backend unavailable with the driver's reason.
"""
from __future__ import annotations

from .. import _cuda

_EXPORTED = ("matmul", "attention", "rms_norm", "layer_norm")


if hasattr(_cuda, "attention"):
    def attention(q, k, v, causal=False, scale=None, bias=None, mask=None, rel_pos=None, **kw):
        """The CUDA kernel takes a plain bias: a decomposed one (rel_pos) is formed here."""
        if rel_pos is not None:
            from .reference import rel_pos_bias
            extra = rel_pos_bias(*rel_pos)
            bias = extra if bias is None else bias + extra
        return _cuda.attention(q, k, v, causal=causal, scale=scale, bias=bias, mask=mask, **kw)


def unavailable_reason() -> str | None:
    n, why = _cuda.device_status()
    return None if n > 0 else f"no usable CUDA device ({why})"


def __getattr__(name):
    if name in _EXPORTED and hasattr(_cuda, name):
        return getattr(_cuda, name)
    raise AttributeError(name)
