"""costmodel: per-layer FLOPs, bytes and roofline times of LLaMA 2, CLIP, SAM and Whisper on named
devices, built from the pyworkloads model configs (docs/architecture.md §3 and §5).

    import costmodel as cm
    r = cm.analyze("llama2-7b", device="h100-sxm", phase="decode", batch=1, seq_len=2048,
                   dtype="bf16")
    r.layers, r.total, r.params, r.summary
    r.to_json(); r.to_csv(); r.to_markdown()
    cm.get_device("h100-sxm").peak("bf16")
"""
from __future__ import annotations

from .analysis import MODELS, PHASES, Report, analyze, presets, resolve_model
from .graph import SCHEMA, Layer, Precision
from .hardware import Device, add_devices_file, cpu_device, devices, get_device, load_devices

__all__ = ["analyze", "Report", "Layer", "Precision", "SCHEMA", "Device", "get_device", "devices",
           "load_devices", "add_devices_file", "cpu_device", "presets", "resolve_model", "MODELS",
           "PHASES"]
