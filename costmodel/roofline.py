"""Roofline times of layer records on a device (docs/architecture.md §5).

    t_compute = (flops - flops_vector) / peak(dtype) + (flops_vector - exp) / vector_peak
                + exp / special_rate       (exp: softmax's exponentials, where the device has
                                            special-function units; else they are vector work)
    t_memory  = bytes / bandwidth
    t_comm    = bytes_comm / interconnect + hops x link_latency      (collectives, α-β)
    t_lower   = max(t_compute, t_memory) + t_comm      (perfect overlap: the roofline bound)
    t_upper   = t_compute + t_memory + t_comm          (no overlap at all)
    t_pred    = the device profile's prediction (costmodel.calibration), never below t_lower;
                0 when the device has no profile

Collectives do not overlap with the layer they follow in this model (Megatron's all-reduces sit
on the critical path), so their interconnect time adds to both bounds.
"""
from __future__ import annotations

from .graph import Layer
from .hardware import Device

__all__ = ["time_layer", "time_layers"]


def time_layer(rec: Layer, device: Device) -> Layer:
    tensor = rec.flops - rec.flops_vector
    special = rec.flops_special if device.special_rate else 0
    t_c = ((tensor / device.peak(rec.dtype) if tensor else 0.0)
           + (rec.flops_vector - special) / device.vector_peak
           + (special / device.special_rate if special else 0.0))
    t_m = rec.bytes / device.bandwidth
    t_comm = 0.0
    if rec.bytes_comm:
        if not device.interconnect:
            raise ValueError(f"device {device.key!r} has no interconnect bandwidth; tensor "
                             f"parallelism cannot be timed on it")
        t_comm = rec.bytes_comm / device.interconnect + rec.hops * (device.link_latency or 0.0)
    rec.t_compute, rec.t_memory, rec.t_comm = t_c, t_m, t_comm
    rec.t_lower = max(t_c, t_m) + t_comm
    rec.t_upper = t_c + t_m + t_comm
    if device.profile is not None:
        pred = device.profile.predict(rec)
        rec.t_pred = max(rec.t_lower if pred is None else pred + t_comm, rec.t_lower)
    rec.intensity = rec.flops / rec.bytes if rec.bytes else (float("inf") if rec.flops else 0.0)
    if rec.op == "allreduce":
        rec.bound = "comm"
    elif t_c == 0 and t_m == 0:
        rec.bound = "-"
    else:
        rec.bound = "compute" if t_c >= t_m else "memory"
    return rec


def time_layers(layers: list[Layer], device: Device) -> list[Layer]:
    for rec in layers:
        time_layer(rec, device)
    return layers
