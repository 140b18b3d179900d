"""Adapter for the ``cpp`` backend: the compiled ``pyworkloads._kernels`` extension.

The dispatcher has validated shapes already; the binding checks again (it must never trust its
caller) and refuses anything but float32 with a ``TypeError``.  Ops the extension does not
export are absent here, and the dispatcher falls back to the NumPy reference for them.
"""
from __future__ import annotations

from .. import _kernels  # noqa: F401  (ImportError here means "backend unavailable")

_EXPORTED = (
    "matmul", "matmul_group", "attention", "rms_norm", "layer_norm", "gelu", "set_num_threads",
    "get_num_threads", "max_num_threads", "qmatmul", "dequantize",
)


if hasattr(_kernels, "qmatmul"):
    def qmatmul(x, w):
        """x @ Wᵀ for a :class:`pyworkloads.quant.QuantizedTensor` W: the kernel reads its
        blocks."""
        return _kernels.qmatmul(x, w.data, w.qtype)


def isa() -> str:
    """The ISA level whose module runs the kernels now: the ops below resolve to its functions,
    so the dispatcher keys what it looked up on this."""
    return _kernels.selected()


def unavailable_reason() -> str | None:
    return None


def __getattr__(name):
    if name in _EXPORTED and hasattr(_kernels, name):
        return getattr(_kernels, name)
    raise AttributeError(name)
