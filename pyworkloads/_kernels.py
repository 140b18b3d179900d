"""The C++ CPU kernels, compiled once per x86-64 ISA level and chosen at run time.

CMakeLists.txt builds the same sources into one extension module per level:

==========  ===============================  =============================================
module      compiled for                     SIMD path of ``cpp/simd.h``
==========  ===============================  =============================================
portable    x86-64 baseline (SSE2), or the   plain loops over 8-float structs (the compiler
            target's default off x86         vectorises what it can)
avx2        x86-64-v3: AVX2, FMA, BMI2, F16C  8 floats per register (``__m256``)
avx512      x86-64-v4: AVX-512 F/BW/CD/DQ/VL 16 floats per register (``__m512``)
native      ``-march=native`` (only when     whatever the build machine has
            built with PYWORKLOADS_NATIVE)
==========  ===============================  =============================================

At import, the portable module -- which runs on any CPU of its architecture -- reports which
levels this CPU and its OS support (``cpu_supports``); the best of those that were built is
loaded.  A module for a level the CPU lacks is never imported: its initialisation code alone may
contain an instruction the CPU cannot execute.  ``PYWORKLOADS_CPU_ISA=avx2`` (or ``portable``,
...) picks a lower level at import; :func:`select` switches while running, which is how the tests
check every path this machine can execute and how the benchmarks measure the AVX2 path on an
AVX-512 machine.

Every attribute of the selected module (``matmul``, ``attention``, ``build_info``, ...) is an
attribute of this module, looked up on each access, so a :func:`select` takes effect at once.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

ORDER = ("native", "avx512", "avx2", "portable")       # best first

_probe = importlib.import_module("._kernels_portable", __package__)
_modules: dict[str, ModuleType] = {"portable": _probe}
_threads: int | None = None                             # set_num_threads, kept for every module
_cache_limit: int | None = None                         # output_cache(limit), kept for every module


def _built(isa: str) -> bool:
    return importlib.util.find_spec(f"{__package__}._kernels_{isa}") is not None


def _executable(isa: str) -> bool:
    if isa == "native":        # built for the build machine; choosing it is the builder's promise
        return True
    return bool(_probe.cpu_supports().get(isa, False))


def isas() -> list[str]:
    """The ISA levels built and executable on this CPU, best first (always ends with 'portable')."""
    return [isa for isa in ORDER if _built(isa) and _executable(isa)]


def module(isa: str) -> ModuleType:
    """The extension module compiled for `isa` (imported on first use)."""
    if isa not in ORDER:
        raise ValueError(f"isa must be one of {', '.join(map(repr, ORDER))}, got {isa!r}")
    if isa not in _modules:
        if not _built(isa):
            raise ValueError(f"the {isa!r} kernels were not built (built: "
                             f"{', '.join(i for i in ORDER if _built(i))})")
        if not _executable(isa):
            raise ValueError(f"this CPU cannot execute the {isa!r} kernels (it runs: "
                             f"{', '.join(isas())})")
        mod = importlib.import_module(f"._kernels_{isa}", __package__)
        if _threads is not None:
            mod.set_num_threads(_threads)
        if _cache_limit is not None:
            mod._output_cache(_cache_limit)
        _modules[isa] = mod
    return _modules[isa]


def _initial() -> str:
    wanted = os.environ.get("PYWORKLOADS_CPU_ISA", "").strip().lower()
    if not wanted:
        module(isas()[0])
        return isas()[0]
    try:
        module(wanted)
    except ValueError as exc:
        raise ImportError(f"PYWORKLOADS_CPU_ISA={wanted!r}: {exc}") from None
    return wanted


_selected = _initial()


def selected() -> str:
    """The ISA level whose module runs the kernels now."""
    return _selected


def select(isa: str) -> str:
    """Run every later kernel call with the module compiled for `isa`; returns the previous one."""
    global _selected
    module(isa)
    previous, _selected = _selected, isa
    return previous


def set_num_threads(n) -> None:
    """Threads every later kernel call uses, whichever ISA's module runs it."""
    global _threads
    _modules[_selected].set_num_threads(n)          # validates n and raises with its reason
    _threads = _modules[_selected].get_num_threads()
    for mod in _modules.values():
        mod.set_num_threads(_threads)


def output_cache(limit: int | None = None) -> dict:
    """The cache the kernels' outputs of 1 MiB and more are taken from (``cpp/outputs.h``): a
    block freed with its array is handed to the next output of the same size instead of going
    back to the OS, so large outputs do not fault in fresh pages each time.  With ``limit``
    (bytes kept idle at most; 0 turns the cache off and releases what it holds), sets it for
    every ISA module loaded now and later.  Returns the selected module's counters: limit,
    idle_bytes, idle_blocks, hits, misses."""
    global _cache_limit
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"output_cache: limit must be a number of bytes >= 0, got {limit!r}")
        _cache_limit = limit
        for mod in _modules.values():
            mod._output_cache(limit)
    return dict(_modules[_selected]._output_cache())


def __getattr__(name: str):
    return getattr(_modules[_selected], name)


def __dir__():
    return sorted(set(globals()) | set(dir(_modules[_selected])))
