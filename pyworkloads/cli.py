"""The ``pyworkloads`` command: ``info``, ``demo``, ``run <model> ...`` and ``profile <model>``.

Each model module (``pyworkloads/models/<name>.py``) provides the hooks the commands use:
``demo() -> str`` (a tiny random-weight run on the current backend), ``add_run_arguments(parser)``
and ``run_cli(args) -> int``.

A failed command prints one line, ``pyworkloads: error: <message>``, on stderr and exits with
status 2 (1 for an unexpected exception type); ``PYWORKLOADS_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
import time

import numpy as np

from . import MODELS, __version__, kernels


def _model_modules() -> dict[str, object]:
    """The model modules that exist in this installation, in the canonical order."""
    mods = {}
    for name in MODELS:
        if importlib.util.find_spec(f"pyworkloads.models.{name}") is not None:
            mods[name] = importlib.import_module(f"pyworkloads.models.{name}")
    return mods


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return platform.processor() or "unknown"
    wanted = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16",
              "amx_tile"]
    return " ".join(f for f in wanted if f in flags) or "none of the tracked SIMD extensions"


def cmd_info(args) -> int:
    print(f"pyworkloads {__version__}  (Python {platform.python_version()}, "
          f"NumPy {np.__version__}, {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} logical cores)")
    print(f"CPU features: {_cpu_features()}")
    print("backends:")
    for name in kernels.BACKENDS:
        why = kernels.unavailable_reason(name)
        print(f"  {name:<6} {'available' if why is None else 'unavailable: ' + why}")
    try:
        from . import _kernels
        info = _kernels.build_info()
        built = [i for i in _kernels.ORDER if _kernels._built(i)]
        print(f"C++ extension: ISA {_kernels.selected()} (built: {', '.join(built)}; runs here: "
              f"{', '.join(_kernels.isas())}), OpenMP {'on' if info['openmp'] else 'off'}, "
              f"SIMD {info['simd']}, compiler {info['compiler']}, "
              f"threads {kernels.get_num_threads()}")
    except ImportError as exc:
        print(f"C++ extension: not built ({exc})")
    try:
        from . import _cuda
        n, why = _cuda.device_status()
        rt = _cuda.runtime_version()
        print(f"CUDA extension: built (CUDA runtime {rt // 1000}.{rt % 1000 // 10}); "
              f"devices: {n}{'' if n else ' (' + why + ')'}")
    except ImportError as exc:
        print(f"CUDA extension: not built ({exc})")
    print(f"models: {', '.join(_model_modules()) or '(none)'}")
    return 0


def cmd_demo(args) -> int:
    mods = _model_modules()
    names = args.models.split(",") if args.models else list(mods)
    backends = args.backends.split(",") if args.backends else kernels.available()
    for n in names:
        if n not in mods:
            raise ValueError(f"unknown model {n!r}; available: {', '.join(mods)}")
    for b in backends:
        if kernels.unavailable_reason(b):
            raise ValueError(f"backend {b!r} unavailable: {kernels.unavailable_reason(b)}")
    print(f"demo: tiny random-weight models on backends {', '.join(backends)}")
    t_all = time.perf_counter()
    for n in names:
        for b in backends:
            with kernels.use_backend(b):
                t0 = time.perf_counter()
                result = mods[n].demo()
                dt = time.perf_counter() - t0
            print(f"  {n:<8} {b:<6} {dt * 1e3:8.1f} ms   {result}")
    print(f"done in {time.perf_counter() - t_all:.1f} s")
    return 0


def cmd_profile(args) -> int:
    mod = _model_modules()[args.model]
    with kernels.use_backend(args.backend), kernels.profile() as prof:
        t0 = time.perf_counter()
        result = mod.demo()
        dt = time.perf_counter() - t0
    print(f"{args.model} on {args.backend}: {dt * 1e3:.1f} ms   {result}")
    print(prof.summary(by=args.by))
    return 0


def _check_threads(n: int) -> int:
    """--threads: from 1 to the kernels' limit, checked before anything runs."""
    limit = kernels._thread_limit()
    if not 1 <= n <= limit:
        raise ValueError(f"--threads must be a positive integer, at most {limit} (4 x the "
                         f"{limit // 4} cores this process may use), got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyworkloads", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"pyworkloads {__version__}")
    p.add_argument("--threads", type=int,
                   help="threads for the compiled kernels (default: all cores; at most 4 x the "
                        "cores)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("info", help="version, backends, CPU features, CUDA status")
    sp.set_defaults(func=cmd_info)

    mods = _model_modules()
    sp = sub.add_parser("demo",
                        help="run every model on tiny random weights on every available backend")
    sp.add_argument("--models", help=f"comma-separated subset of: {', '.join(mods)}")
    sp.add_argument("--backends", help="comma-separated subset of the available backends")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("profile", help="per-kernel FLOPs, bytes and time of a model's demo run")
    sp.add_argument("model", choices=list(mods))
    sp.add_argument("--backend", default="numpy", choices=kernels.BACKENDS)
    sp.add_argument("--by", default="op", choices=["op", "name"],
                    help="group by kernel op or by layer scope")
    sp.set_defaults(func=cmd_profile)

    run = sub.add_parser("run", help="run a model on a checkpoint directory or a preset")
    run_sub = run.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name, mod in mods.items():
        mp = run_sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mp.add_argument("--backend", default="numpy", choices=kernels.BACKENDS)
        mod.add_run_arguments(mp)
        mp.set_defaults(func=lambda a, _m=mod: _run_model(_m, a))
    return p


def _run_model(mod, args) -> int:
    with kernels.use_backend(args.backend):
        return mod.run_cli(args)


# what a user can cause: bad files, bad arguments, unavailable backends, inputs too large
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, MemoryError)


def report_error(exc: BaseException, prog: str = "pyworkloads") -> int:
    """Print ``prog: error: <message>`` on stderr for a failed command -> its exit status: 2 for
    a user error, 1 for any other exception (a library's own type, or a bug).  With
    PYWORKLOADS_DEBUG=1 in the environment the exception is raised again instead, traceback and
    all."""
    if os.environ.get("PYWORKLOADS_DEBUG", "") not in ("", "0"):
        raise exc
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, MemoryError):
        msg = f"out of memory ({msg or 'MemoryError'})"
    elif not isinstance(exc, USER_ERRORS):
        msg = f"{type(exc).__name__}: {msg} (PYWORKLOADS_DEBUG=1 shows where)"
    print(f"{prog}: error: {msg or type(exc).__name__}", file=sys.stderr)
    return 2 if isinstance(exc, USER_ERRORS) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            kernels.set_num_threads(_check_threads(args.threads))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pyworkloads: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                     # `pyworkloads ... | head`: the reader left
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:                    # one line, no traceback (PYWORKLOADS_DEBUG=1)
        return report_error(exc)


if __name__ == "__main__":
    sys.exit(main())
