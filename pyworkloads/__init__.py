"""pyworkloads: readable NumPy forward passes of LLaMA2, CLIP, Segment Anything and Whisper, with
swappable C++/CUDA kernels.  ``pw.llama2``, ``pw.clip``, ``pw.sam`` and ``pw.whisper`` are the
model modules (imported on first use)."""
from __future__ import annotations

import importlib

from . import io, kernels, ops, quant
from .kernels import available, get_backend, profile, set_backend, set_num_threads, use_backend

__version__ = "0.1.0"
__all__ = ["io", "kernels", "ops", "quant", "available", "use_backend", "get_backend",
           "set_backend", "profile", "set_num_threads", "MODELS", "__version__"]

MODELS = ("llama2", "clip", "sam", "whisper")


def __getattr__(name):
    if name in MODELS:
        mod = importlib.import_module(f".models.{name}", __name__)
        globals()[name] = mod
        return mod
    if name == "audio":
        return importlib.import_module(".audio", __name__)
    raise AttributeError(f"module 'pyworkloads' has no attribute {name!r}")
