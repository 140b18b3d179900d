"""The device database: peaks, bandwidths and capacities, each with its source.

The figures live in ``devices.toml`` next to this file (data, not code); users add their own
devices from a TOML or JSON file of the same layout (``load_devices(path)``, the CLI's
``--devices-file``, or the ``COSTMODEL_DEVICES`` environment variable).  The ``cpu`` device is
this machine: its roofs are its theoretical compute peak and best measured streaming bandwidth,
and a calibrated profile of the project's own kernels (``costmodel calibrate``, see
``costmodel.calibration``) lets it predict times; ``cpu:cpp`` / ``cpu:numpy`` pick a backend's
profile.

Units inside the program are SI base units: FLOP/s, B/s, bytes.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Device", "get_device", "with_profile", "devices", "load_devices", "cpu_device",
           "check_file",
           "DATA_FILE", "PEAK_FIELDS"]

DATA_FILE = Path(__file__).with_name("devices.toml")

# dtype -> the field holding its dense peak (TFLOP/s; TOPS for int8)
PEAK_FIELDS = {"fp64": "fp64_tflops", "fp32": "fp32_tflops", "tf32": "tf32_tflops",
               "fp16": "fp16_tflops", "bf16": "bf16_tflops", "fp8": "fp8_tflops",
               "int8": "int8_tops"}
NUMERIC_FIELDS = tuple(PEAK_FIELDS.values()) + ("memory_gb", "bandwidth_gbps", "l2_mb",
                                                "interconnect_gbps", "fp32_per_sm_clock",
                                                "sfu_per_sm_clock", "link_latency_us", "tdp_w")


@dataclass(frozen=True)
class Device:
    """One accelerator (or this CPU).  Peaks are dense FLOP/s; ``fp32`` is the vector rate."""
    key: str
    name: str
    vendor: str
    segment: str                       # "datacenter" | "geforce" | "cpu" | user-defined
    peaks: dict                        # dtype -> FLOP/s (dense)
    vector_peak: float                 # FLOP/s of non-tensor FP32 work (softmax, norms,
                                       # activations)
    bandwidth: float                   # B/s
    memory: int                        # bytes
    l2: int | None                     # bytes
    interconnect: float | None         # B/s per direction per GPU
    confirmed: bool = True
    sources: dict = field(default_factory=dict)   # field -> "<source id>: quote"
    references: dict = field(default_factory=dict)  # source id -> URL / description
    profile: object = None             # a calibration.Profile: measured efficiencies -> t_pred
    special_rate: float | None = None  # exponentials etc. per second on special-function units
    link_latency: float | None = None  # seconds per step of a collective (the α of α-β)
    tdp: float | None = None           # W: the board's maximum power (TDP / board power)

    def peak(self, dtype: str) -> float:
        """Dense FLOP/s of matrix products in ``dtype`` (fp32 = without TF32, the PyTorch
        default)."""
        if dtype not in PEAK_FIELDS:
            raise ValueError(f"dtype must be one of {', '.join(PEAK_FIELDS)}, got {dtype!r}")
        if dtype not in self.peaks:
            have = ", ".join(d for d in PEAK_FIELDS if d in self.peaks)
            raise ValueError(f"device {self.key!r} ({self.name}) has no {dtype} peak in its "
                             f"datasheet; it has: {have}")
        return self.peaks[dtype]

    def supports(self, dtype: str) -> bool:
        return dtype in self.peaks

    def ridge(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP/B) where the compute roof meets the memory roof."""
        return self.peak(dtype) / self.bandwidth

    def as_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "vendor": self.vendor, "segment": self.segment,
                "confirmed": self.confirmed, "peaks_flops": dict(self.peaks),
                "vector_peak_flops": self.vector_peak,
                "bandwidth_Bps": self.bandwidth, "memory_bytes": self.memory, "l2_bytes": self.l2,
                "interconnect_Bps_per_direction": self.interconnect,
                "special_function_rate": self.special_rate, "link_latency_s": self.link_latency,
                "tdp_w": self.tdp,
                "sources": dict(self.sources)}


def _device_from_entry(key: str, e: dict, refs: dict) -> Device:
    if not isinstance(e, dict):
        raise ValueError(f"device {key!r}: expected a table of fields, got {type(e).__name__}")
    for need in ("name", "fp32_tflops", "memory_gb", "bandwidth_gbps"):
        if need not in e:
            raise ValueError(f"device {key!r}: missing field {need!r}")
    for f in NUMERIC_FIELDS:
        if f in e and (isinstance(e[f], bool) or not isinstance(e[f], (int, float))
                       or not e[f] > 0):
            raise ValueError(f"device {key!r}: {f} must be a positive number, got {e[f]!r}")
    peaks = {dt: float(e[f]) * 1e12 for dt, f in PEAK_FIELDS.items() if f in e}
    return Device(
        key=key, name=str(e["name"]), vendor=str(e.get("vendor", "")),
        segment=str(e.get("segment", "")),
        peaks=peaks, vector_peak=float(e.get("vector_tflops", e["fp32_tflops"])) * 1e12,
        bandwidth=float(e["bandwidth_gbps"]) * 1e9, memory=int(round(float(e["memory_gb"]) * 1e9)),
        l2=int(round(float(e["l2_mb"]) * 1e6)) if "l2_mb" in e else None,
        interconnect=float(e["interconnect_gbps"]) * 1e9 if "interconnect_gbps" in e else None,
        confirmed=bool(e.get("confirmed", True)), sources=dict(e.get("source", {})),
        references=refs,
        special_rate=(float(e["fp32_tflops"]) * 1e12 * e["sfu_per_sm_clock"]
                      / (2 * e["fp32_per_sm_clock"])
                      if "sfu_per_sm_clock" in e and "fp32_per_sm_clock" in e else None),
        link_latency=float(e["link_latency_us"]) * 1e-6 if "link_latency_us" in e else None,
        tdp=float(e["tdp_w"]) if "tdp_w" in e else None)


def load_devices(path: str | os.PathLike) -> dict[str, Device]:
    """Read a device file (TOML or JSON: ``{"sources": {...}, "device": {"key": {...}}}``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"devices file {str(path)!r} does not exist")
    text = path.read_bytes()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"devices file {str(path)!r} is not valid "
                         f"{path.suffix[1:].upper() or 'TOML'}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("device"), dict):
        raise ValueError(f"devices file {str(path)!r} needs a [device.<name>] table per device")
    refs = dict(data.get("sources", {}))
    return {key: _device_from_entry(key, e, refs) for key, e in data["device"].items()}


_db: dict[str, Device] | None = None
_extra_files: list[Path] = []


def add_devices_file(path: str | os.PathLike) -> list[str]:
    """Merge a user's devices into the database (later files override earlier keys)."""
    new = load_devices(path)
    _database().update(new)
    _extra_files.append(Path(path))
    return list(new)


def _database() -> dict[str, Device]:
    global _db
    if _db is None:
        _db = load_devices(DATA_FILE)
        env = os.environ.get("COSTMODEL_DEVICES")
        if env:
            for p in env.split(os.pathsep):
                if p:
                    _db.update(load_devices(p))
    return _db


def devices(include_cpu: bool = False) -> dict[str, Device]:
    """The device database (``cpu`` is measured on first use, so it is only added when asked)."""
    db = dict(_database())
    if include_cpu:
        db["cpu"] = cpu_device()
    return db


def with_profile(device, profile, use: str | None = None) -> Device:
    """``device`` (a name or Device) predicting with ``profile`` (a calibration.Profile or a
    profile JSON path); ``use`` "ours" or "vendor" picks the GPU profile's table."""
    import dataclasses

    from .calibration import load_profile
    dev = get_device(device)
    prof = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
    if use is not None:
        if use not in ("ours", "vendor"):
            raise ValueError(f"use must be 'ours' or 'vendor', got {use!r}")
        if use == "vendor" and not prof.vendor:
            raise ValueError("this profile has no vendor-library measurements (a bench_cuda "
                             "profile has them)")
        prof = dataclasses.replace(prof, use=use)
    return dataclasses.replace(dev, profile=prof)


def get_device(name) -> Device:
    """A device by key (``"h100-sxm"``), or ``"cpu"`` for this machine; a Device passes through."""
    if isinstance(name, Device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"device must be a device name or a Device, got {type(name).__name__}")
    key = name.strip().lower()
    if key == "cpu":
        return cpu_device()
    if key.startswith("cpu:"):                       # cpu:cpp, cpu:numpy: that backend's profile
        return cpu_device(backend=key[4:])
    db = _database()
    if key not in db:
        close = [k for k in db if key and (key in k or k in key)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown device {name!r}{hint}; known devices: "
                         f"{', '.join(sorted(db))}, cpu")
    return db[key]


# ---------------------------------------------------------------------------------------------
# the cpu device: a short calibration, cached
# ---------------------------------------------------------------------------------------------
def _cache_dir() -> Path:
    if os.environ.get("COSTMODEL_CACHE_DIR"):
        return Path(os.environ["COSTMODEL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("LOCALAPPDATA") if os.name == "nt" else None) or Path.home() / ".cache"
    return Path(base) / "pyworkloads-costmodel"


def _machine_id() -> str:
    """What invalidates the calibration: another CPU, core count or NumPy (BLAS) build."""
    return (f"{platform.node()}|{platform.machine()}|{platform.processor()}|{os.cpu_count()}"
            f"|numpy {np.__version__}")


def _best_time(fn, reps: int) -> float:
    fn()                                   # warm-up: page faults, BLAS thread start
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate_cpu() -> dict:
    """A quick measurement (~0.5 s) for the ``cpu`` device when no calibrated profile exists:
    NumPy's FP32 GEMM rate, the cores' FMA rate on registers, an elementwise rate and the best
    streaming bandwidth (a copy's read + write and a read-only sum, beyond the caches)."""
    n = 768
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    gemm = 2 * n ** 3 / _best_time(lambda: np.matmul(a, b), 5)
    x = rng.standard_normal(1 << 16, dtype=np.float32)    # 256 KB: stays in cache, so compute-bound
    y = np.empty_like(x)
    vec = x.size / _best_time(lambda: np.multiply(x, x, out=y), 20)
    big = np.ones(16 << 20, dtype=np.float32)                 # 64 MB: far beyond the caches
    dst = np.empty_like(big)
    copy = 2 * big.nbytes / _best_time(lambda: np.copyto(dst, big), 5)   # one read + one write
    read = big.nbytes / _best_time(lambda: np.add.reduce(big), 5)
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 0
    from .calibration import fma_peak
    return {"machine": _machine_id(), "fp32_flops": gemm, "fma_flops": fma_peak(),
            "vector_flops": vec,
            "bandwidth_Bps": max(copy, read), "memory_bytes": int(mem),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _quick_calibration(recalibrate: bool) -> tuple[dict, Path]:
    path = _cache_dir() / "cpu.json"
    cal = None
    if not recalibrate and path.is_file():
        try:
            cal = json.loads(path.read_text())
            if cal.get("machine") != _machine_id() or "fma_flops" not in cal:
                cal = None
        except (OSError, json.JSONDecodeError):
            cal = None
    if cal is None:
        cal = calibrate_cpu()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cal, indent=1))
        except OSError:
            pass                           # read-only home: use the measurement uncached
    return cal, path


def cpu_device(recalibrate: bool = False, backend: str | None = None) -> Device:
    """This machine as a Device.

    Its roofs are bounds: the compute peak is the theoretical one (cores x SIMD lanes x FMA pipes
    x clock; a measured rate when that is higher, i.e. the reported clock is not the boost clock)
    and the bandwidth the best streaming rate measured.  With a calibrated profile of ``backend``
    (default: cpp if there is one, else numpy; ``costmodel calibrate``) the device also predicts
    (``t_pred``); without one, a quick NumPy measurement supplies the roofs."""
    from .calibration import load_profile, theoretical_cpu_peak
    prof = None
    for b in ([backend] if backend else ["cpp", "numpy"]):
        prof = load_profile(b)
        if prof is not None:
            break
    if backend and prof is None:
        raise ValueError(f"no {backend} profile of this machine: run `costmodel calibrate "
                         f"--backend {backend}` first")
    if prof is not None:
        peak, how, bw = prof.peak_flops, prof.peak_how, prof.bandwidth
        note = f"calibrated profile ({prof.backend}, measured {prof.measured_at})"
        mem = _quick_memory()
    else:
        cal, path = _quick_calibration(recalibrate)
        peak, how = theoretical_cpu_peak()
        measured = max(float(cal["fp32_flops"]), float(cal.get("fma_flops", 0.0)))
        if peak is None or peak < measured:
            peak, how = measured, ("independent FMAs on registers, measured (the reported clock "
                                   "is below what the cores reach)")
        bw, mem = float(cal["bandwidth_Bps"]), int(cal["memory_bytes"])
        note = f"quick measurement {cal['measured_at']} cached in {path}"
    # the engine's kernels compute in float32 whatever the storage dtype: one rate for all
    peaks = {dt: peak for dt in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")}
    peaks["fp64"] = peak / 2
    label = f" {prof.backend} profile" if prof is not None else ""
    return Device(key="cpu", name=f"this CPU ({cores_label()}, {platform.machine()}){label}",
                  vendor="", segment="cpu", peaks=peaks, vector_peak=peak, bandwidth=bw,
                  memory=mem, l2=None, interconnect=None, confirmed=True,
                  sources={"fp32_tflops": f"{how}", "vector_tflops": "the same SIMD units",
                           "bandwidth_gbps": f"best streaming bandwidth, {note}",
                           "fp64_tflops": "half the FP32 rate (half the SIMD lanes)",
                           "memory_gb": "os.sysconf physical pages"},
                  profile=prof)


def cores_label() -> str:
    from .calibration import cores
    return f"{cores()} cores"


def _quick_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


# ---------------------------------------------------------------------------------------------
# the quote rule the lint tests and `costmodel devices --check` use
# ---------------------------------------------------------------------------------------------
# a standalone number: not glued to letters ("FP16", "HBM2e", "x16", "Gen4", "NVLink5" are names)
_NUM = re.compile(r"(?<![A-Za-z\d.,])\d[\d,]*(?:\.\d+)?(?![\dA-Za-z])")


def value_from_quote(quote: str) -> float | None:
    """Re-derive a field's value from its source quote ("<id>: <figure as printed>").

    The figure is the last standalone number before any parenthesis (parentheses hold commentary;
    digits inside names such as FP16 or HBM2e do not count); the words
    in that same clause convert it: "with sparsity" / "total" / "bidirectional" halve it (dense,
    per direction), "Gb/s" divides by 8 (bits), "TB/s" and "PFLOPS" multiply by 1000."""
    head = quote.split(":", 1)[-1].split("(")[0]
    nums = _NUM.findall(head)
    if not nums:
        return None
    v = float(nums[-1].replace(",", ""))
    low = head.lower()
    if "sparsity" in low:
        v /= 2
    if "total" in low or "bidirectional" in low:      # either word: both directions, counted once
        v /= 2
    if "Gb/s" in head:
        v /= 8
    if "TB/s" in head or "PFLOPS" in head:
        v *= 1000
    return v


def check_entry(key: str, e: dict, sources: dict) -> list[str]:
    """Problems of one device entry: a numeric field without a source, an unknown source id, or a
    value its own quote does not re-derive (see :func:`value_from_quote`)."""
    problems = []
    for f in NUMERIC_FIELDS:
        if f not in e:
            continue
        quote = e.get("source", {}).get(f)
        if not quote:
            problems.append(f"{key}.{f}: no source")
            continue
        src = quote.split(":")[0].split(" ")[0]
        if src not in sources:
            problems.append(f"{key}.{f}: unknown source id {src!r} (add it to [sources])")
        derived = value_from_quote(quote)
        if derived is None or abs(derived - e[f]) > 0.005 * abs(e[f]):
            problems.append(f"{key}.{f} = {e[f]} but its quote {quote!r} gives {derived}")
    if not isinstance(e.get("memory_gb"), int):
        problems.append(f"{key}.memory_gb must be the printed integer GB, got "
                        f"{e.get('memory_gb')!r}")
    return problems


def check_file(path: str | os.PathLike = DATA_FILE) -> list[str]:
    """Every problem :func:`check_entry` finds in a devices file (empty: the file is clean)."""
    path = Path(path)
    text = path.read_bytes()
    data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text.decode())
    load_devices(path)                                     # the structural checks first
    return [p for key, e in data["device"].items()
            for p in check_entry(key, e, data.get("sources", {}))]
