"""costmodel: per-layer FLOPs, bytes and times of LLaMA 2, CLIP, SAM and Whisper on named devices
and on this machine, for exactly the layers the pyworkloads engine runs (read from a shape-only
trace of its forward pass; docs/architecture.md §3 and §5).

    import costmodel as cm
    r = cm.analyze("llama2-7b", device="h100-sxm", phase="decode", batch=1, seq_len=2048,
                   dtype="bf16")
    r.layers, r.total, r.params, r.summary
    r.to_json(); r.to_csv(); r.to_markdown()
    cm.get_device("h100-sxm").peak("bf16")

    cm.calibrate(backend="cpp")               # this machine's kernels, measured -> t_pred
    v = cm.validate("llama2-110m", backend="cpp", phase="decode", seq_len=200)
"""
from __future__ import annotations

from .analysis import MODELS, PHASES, Report, analyze, presets, resolve_model
from .calibration import Profile, calibrate, load_profile, profile_from_bench
from .graph import SCHEMA, Layer, Precision
from .hardware import (
                       Device,
                       add_devices_file,
                       cpu_device,
                       devices,
                       get_device,
                       load_devices,
                       with_profile,
)
from .serving import ServeResult, serve, sweep, zero_load
from .training import TrainReport, train
from .validate import Validation, validate, validate_bench

__all__ = ["analyze", "Report", "Layer", "Precision", "SCHEMA", "Device", "get_device", "devices",
           "load_devices", "add_devices_file", "cpu_device", "presets", "resolve_model", "MODELS",
           "PHASES", "calibrate", "Profile", "load_profile", "profile_from_bench", "validate",
           "validate_bench", "Validation", "with_profile",
           "serve", "sweep", "zero_load", "ServeResult",
           "train", "TrainReport"]
