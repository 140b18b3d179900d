"""Per-kernel resources of the CUDA extension: registers, local memory (spills), shared memory.

    python dev/cuda/resource_usage.py [SO] [--arch sm_90] [--json FILE] [--check]
    python dev/cuda/resource_usage.py --from-source [--arch sm_90]     # no cuobjdump needed

Why: a kernel that spills registers to local memory, or whose registers times its block size
exceed the register file, is slow or fails to launch ("too many resources requested") -- and
on a machine without a GPU nothing else will tell.  Both facts are in the compiled code.

Sources of the numbers:
  * the built extension (default): ``cuobjdump --dump-resource-usage`` gives, per kernel and
    architecture, REG (registers per thread), STACK (the stack frame: register spills or local
    arrays -- cuobjdump cannot tell which), LOCAL, SHARED (static shared memory; dynamic shared
    memory is chosen at launch and not in the binary); ``cuobjdump --dump-elf`` gives the
    launch bounds the code was compiled for (EIATTR_MAX_THREADS = __launch_bounds__'s first
    argument, EIATTR_MAXREG_COUNT = the register cap ptxas derived from it).
  * ``--from-source``: compiles cpp/cuda/*.cu to cubins with ``nvcc -Xptxas -v`` and parses
    ptxas's report, which separates spill stores/loads from the stack frame.  Needs only nvcc.

cuobjdump is looked up on PATH, in $CUDA_HOME/bin, /usr/local/cuda/bin, and in the
``nvidia-cuda-cuobjdump`` wheel (``pip install nvidia-cuda-cuobjdump``: nvidia/cu13/bin).
``--check`` exits 1 when a kernel uses local memory or does not fit its launch bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGISTER_FILE = 65536  # 32-bit registers per SM (and the most one block may use), sm_50 .. sm_100
STATIC_SHARED_LIMIT = (
    48 * 1024
)  # static __shared__ per block; more needs dynamic shared memory + opt-in
UNBOUNDED_THREADS = 256  # kernels without __launch_bounds__ are launched with <= 256 threads here


@dataclasses.dataclass
class KernelUsage:
    arch: str  # "sm_90"
    name: str  # mangled
    registers: int
    stack: int = 0  # bytes per thread
    local: int = 0  # bytes per thread
    shared: int = 0  # static shared memory, bytes per block
    spill_stores: int | None = None  # only known from ptxas (--from-source)
    spill_loads: int | None = None
    max_threads: int | None = None  # __launch_bounds__ (None: none declared)
    max_registers: int | None = None  # ptxas's register cap
    pretty: str = ""

    @property
    def uses_local_memory(self) -> bool:
        """Spills (or a local array): per-thread memory in DRAM/L1 instead of registers."""
        if self.spill_stores is not None:
            return bool(self.spill_stores or self.spill_loads or self.local)
        return bool(self.stack or self.local)

    @property
    def short(self) -> str:
        """The readable kernel name without the project's namespaces."""
        s = self.pretty or self.name
        s = re.sub(r"pyworkloads::cuda::|\(anonymous namespace\)::", "", s)
        return s


def allocated_registers(regs: int) -> int:
    """Registers are allocated per thread in units of 8 (a warp's 256-register granule)."""
    return -(-max(regs, 1) // 8) * 8


def problems(k: KernelUsage) -> list[str]:
    """Why this kernel is slow or cannot launch as compiled; empty when fine."""
    out = []
    if k.uses_local_memory:
        if k.spill_stores is not None:
            out.append(
                f"spills: {k.spill_stores} B stores, {k.spill_loads} B loads, stack frame "
                f"{k.stack} B"
            )
        else:
            out.append(
                f"uses local memory: stack frame {k.stack} B, local {k.local} B per thread "
                "(register spills or a local array)"
            )
    if k.max_registers is not None and k.registers > k.max_registers:
        out.append(f"{k.registers} registers exceed the cap {k.max_registers}")
    threads = k.max_threads or UNBOUNDED_THREADS
    need = allocated_registers(k.registers) * (-(-threads // 32) * 32)
    if need > REGISTER_FILE:
        out.append(
            f"{k.registers} registers x {threads} threads = {need} > {REGISTER_FILE}: cannot launch"
        )
    if k.shared > STATIC_SHARED_LIMIT:
        out.append(f"static shared memory {k.shared} B > {STATIC_SHARED_LIMIT} B")
    return out


# ---- parsers --------------------------------------------------------------------------------
_ARCH = re.compile(r"^arch = (sm_\w+)")
_FUNC = re.compile(r"^\s*Function (\S+?):\s*$")
_FIELDS = re.compile(r"(\w+)(?:\[\d+\])?:(\d+)")


def parse_resource_usage(text: str) -> list[KernelUsage]:
    """Parse ``cuobjdump --dump-resource-usage`` output (one ``Function name:`` line, then a
    ``REG:n STACK:n SHARED:n LOCAL:n ...`` line, per kernel of each ELF; device functions that
    are not kernels appear too and are kept)."""
    out: list[KernelUsage] = []
    arch, name = "?", None
    for line in text.splitlines():
        if m := _ARCH.match(line):
            arch = m.group(1)
        elif m := _FUNC.match(line):
            name = m.group(1)
        elif name and "REG:" in line:
            f = {}
            for key, val in _FIELDS.findall(line):
                f.setdefault(key, int(val))  # CONSTANT[0] and CONSTANT[2]: keep the first
            out.append(
                KernelUsage(
                    arch=arch,
                    name=name,
                    registers=f.get("REG", 0),
                    stack=f.get("STACK", 0),
                    local=f.get("LOCAL", 0),
                    shared=f.get("SHARED", 0),
                )
            )
            name = None
    return out


def parse_elf_bounds(lines) -> dict[tuple[str, str], dict[str, int]]:
    """From ``cuobjdump --dump-elf``: {(arch, kernel): {"max_threads": n, "max_registers": n}}.

    The per-kernel section ``.nv.info.<name>`` lists attributes as ``Attribute: EIATTR_X`` then
    ``Value: ...`` lines; MAX_THREADS holds the x, y, z block bounds."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    arch, name, attr = "?", None, None
    for line in lines:
        line = line.rstrip("\n")
        if m := _ARCH.match(line):
            arch, name = m.group(1), None
        elif line.startswith(".nv.info."):
            name, attr = line[len(".nv.info.") :].strip(), None
        elif line and not line[0].isspace():
            name, attr = None, None  # another section or header
        elif name and "Attribute:" in line:
            attr = line.split("Attribute:", 1)[1].strip()
        elif name and attr and "Value:" in line:
            vals = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", line.split("Value:", 1)[1])]
            if attr == "EIATTR_MAX_THREADS" and vals:
                n = 1
                for v in vals[:3]:
                    n *= max(v, 1)
                out.setdefault((arch, name), {})["max_threads"] = n
            elif attr == "EIATTR_MAXREG_COUNT" and vals:
                out.setdefault((arch, name), {})["max_registers"] = vals[0]
            attr = None
    return out


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_PTXAS_PROPS = re.compile(r"Function properties for (\S+)")
_PTXAS_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list[KernelUsage]:
    """Parse ``ptxas -v`` (``nvcc -Xptxas -v``) output: entry functions only."""
    out: list[KernelUsage] = []
    cur: KernelUsage | None = None
    props_for = None
    for line in text.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            cur = KernelUsage(arch=m.group(2), name=m.group(1), registers=0)
            out.append(cur)
        elif m := _PTXAS_PROPS.search(line):
            props_for = m.group(1)
        elif (m := _PTXAS_FRAME.search(line)) and cur is not None and props_for == cur.name:
            cur.stack, cur.spill_stores, cur.spill_loads = (int(g) for g in m.groups())
        elif (m := _PTXAS_USED.search(line)) and cur is not None:
            cur.registers = int(m.group(1))
            if s := _PTXAS_SMEM.search(line):
                cur.shared = int(s.group(1))
    return out


# ---- tools ----------------------------------------------------------------------------------
def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, the toolkit next to nvcc, or the nvidia-cuda-cuobjdump wheel."""
    if path := shutil.which("cuobjdump"):
        return path
    dirs = [
        os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)
    ]
    if nvcc := shutil.which("nvcc"):
        dirs.append(os.path.dirname(os.path.realpath(nvcc)))
    dirs += sorted(glob.glob("/usr/local/cuda*/bin"))
    for p in sys.path:  # pip wheel: nvidia/cu13/bin or nvidia/cuda_cuobjdump/bin
        dirs += sorted(glob.glob(os.path.join(p, "nvidia", "*", "bin")))
    for d in dirs:
        exe = os.path.join(d, "cuobjdump")
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def find_extension() -> Path | None:
    """The built pyworkloads._cuda: next to the sources (dev build) or wherever it imports from."""
    hits = sorted((ROOT / "pyworkloads").glob("_cuda*.so"), key=lambda p: p.stat().st_mtime)
    if hits:
        return hits[-1]
    import importlib.util

    try:
        spec = importlib.util.find_spec("pyworkloads._cuda")
    except ImportError:
        return None
    return Path(spec.origin) if spec and spec.origin else None


def demangle(usages: list[KernelUsage]) -> None:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not usages:
        return
    names = sorted({k.name for k in usages})
    try:
        res = subprocess.run(
            [cxxfilt], input="\n".join(names), capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return
    pretty = dict(zip(names, res.stdout.splitlines())) if res.returncode == 0 else {}
    for k in usages:
        k.pretty = pretty.get(k.name, k.name)


def from_binary(so: Path, cuobjdump: str, arch: str | None = None) -> list[KernelUsage]:
    """Resource usage of every kernel in the extension (all architectures, or `arch`)."""
    base = [cuobjdump] + (["-arch", arch] if arch else [])
    res = subprocess.run(
        base + ["--dump-resource-usage", str(so)], capture_output=True, text=True, timeout=120
    )
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump failed ({res.returncode}): {res.stderr.strip()[:500]}")
    usages = parse_resource_usage(res.stdout)
    with subprocess.Popen(
        base + ["--dump-elf", str(so)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:  # ~1M lines: streamed, not held
        bounds = parse_elf_bounds(proc.stdout)
    for k in usages:
        b = bounds.get((k.arch, k.name), {})
        k.max_threads = b.get("max_threads")
        k.max_registers = b.get("max_registers")
    demangle(usages)
    return usages


def from_source(arch: str = "sm_90", sources: list[Path] | None = None) -> list[KernelUsage]:
    """Compile each .cu to a cubin for `arch` with ptxas verbose output (spill bytes exact)."""
    nvcc = shutil.which("nvcc")
    if not nvcc:
        raise RuntimeError("nvcc not found on PATH")
    sources = sources or sorted((ROOT / "cpp" / "cuda").glob("*.cu"))
    usages: list[KernelUsage] = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            cmd = [
                nvcc,
                "-cubin",
                f"-arch={arch}",
                "-O3",
                "--expt-relaxed-constexpr",
                "-std=c++17",
                "-Xptxas",
                "-v",
                "-I",
                str(ROOT / "cpp"),
                "-I",
                str(ROOT / "cpp" / "cuda"),
                "-o",
                os.path.join(tmp, src.stem + ".cubin"),
                str(src),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"nvcc failed on {src.name}: {res.stderr.strip()[-800:]}")
            usages += parse_ptxas(res.stderr + res.stdout)
    demangle(usages)
    return usages


def format_table(usages: list[KernelUsage]) -> str:
    rows = [
        f"{'arch':<6} {'reg':>4} {'cap':>4} {'thr':>5} {'stack':>6} {'spillST':>7} {'local':>5} "
        f"{'smem':>7}  kernel  [problems]"
    ]
    for k in sorted(usages, key=lambda k: (k.arch, k.short)):
        spill = "-" if k.spill_stores is None else str(k.spill_stores)
        bad = problems(k)
        rows.append(
            f"{k.arch:<6} {k.registers:>4} "
            f"{k.max_registers if k.max_registers is not None else '-':>4} "
            f"{k.max_threads if k.max_threads is not None else '-':>5} {k.stack:>6} {spill:>7} "
            f"{k.local:>5} "
            f"{k.shared:>7}  {k.short}" + (f"  [{'; '.join(bad)}]" if bad else "")
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("so", nargs="?", help="the built extension (default: pyworkloads/_cuda*.so)")
    ap.add_argument(
        "--arch",
        help="one architecture, e.g. sm_90 (default: all in the binary; sm_90 for --from-source)",
    )
    ap.add_argument(
        "--from-source",
        action="store_true",
        help="compile cpp/cuda/*.cu with nvcc -Xptxas -v instead",
    )
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("--check", action="store_true", help="exit 1 if any kernel has a problem")
    args = ap.parse_args(argv)
    try:
        if args.from_source:
            usages = from_source(args.arch or "sm_90")
            source = f"nvcc -Xptxas -v ({args.arch or 'sm_90'})"
        else:
            so = Path(args.so) if args.so else find_extension()
            if so is None or not so.exists():
                print(
                    "resource_usage: no built pyworkloads._cuda found (build it: cmake --build "
                    "build/dev)",
                    file=sys.stderr,
                )
                return 2
            tool = find_cuobjdump()
            if tool is None:
                print(
                    "resource_usage: cuobjdump not found (PATH, CUDA_HOME, /usr/local/cuda, or "
                    "`pip install nvidia-cuda-cuobjdump`); try --from-source",
                    file=sys.stderr,
                )
                return 2
            usages = from_binary(so, tool, args.arch)
            source = f"{tool} on {so}"
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"resource_usage: {exc}", file=sys.stderr)
        return 2
    print(f"# {len(usages)} kernels, from {source}")
    print(format_table(usages))
    bad = [(k, problems(k)) for k in usages if problems(k)]
    print(f"# {len(bad)} kernel(s) with problems" + (":" if bad else ""))
    for k, why in bad:
        print(f"#   {k.arch} {k.short}: {'; '.join(why)}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "source": source,
                    "kernels": [
                        dict(dataclasses.asdict(k), short=k.short, problems=problems(k))
                        for k in usages
                    ],
                },
                indent=1,
            )
            + "\n"
        )
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
