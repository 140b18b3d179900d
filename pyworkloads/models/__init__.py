"""One module per model: its Config (parsed from a Hugging Face config.json), named PRESETS,
pure forward functions over a weights dict keyed by HF tensor names, and a thin Model class.

Each module also offers the command-line hooks that ``pyworkloads demo|run|profile`` use:
``demo() -> str`` (a tiny random-weight run, returning a one-line result),
``add_run_arguments(parser)`` and ``run_cli(args)``.
"""
from __future__ import annotations


import os
from pathlib import Path


def available_memory() -> int:
    """Bytes this process could still allocate: the kernel's MemAvailable, capped by a cgroup
    (container) limit when there is one."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def check_fits(need_bytes: int, label: str) -> None:
    """Refuse, with MemoryError, random float32 weights that would not fit (every from_preset)."""
    avail = available_memory()
    if need_bytes > 0.9 * avail:
        raise MemoryError(f"{label}: random float32 weights need {need_bytes / 1e9:.1f} GB but only "
                          f"{avail / 1e9:.1f} GB of memory is available; pick a smaller preset, or load an "
                          f"fp16/bf16 checkpoint with from_pretrained (memory-mapped, converted per use)")
