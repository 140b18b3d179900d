"""What the compiled CUDA kernels use, checked without a GPU (dev/cuda/resource_usage.py).

A kernel that spills registers to local memory runs far below its design speed, and one whose
registers times its block size exceed the register file does not launch at all -- on a
machine without a GPU nothing else would notice either.  Both are facts of the compiled code,
read here from the built extension with ``cuobjdump``.  Skips (with the reason) when the
extension was not built or cuobjdump is not installed (``pip install nvidia-cuda-cuobjdump``
provides it).  The parsers are tested on their own with recorded tool output, so they cannot
silently read nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "resource_usage", ROOT / "dev" / "cuda" / "resource_usage.py"
)
ru = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("resource_usage", ru)  # dataclasses look their module up by name
_spec.loader.exec_module(ru)

# Recorded output shapes (abridged from cuobjdump 13 and ptxas 13), names shortened.
RES_USAGE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
identifier = /x/matmul.cu

Resource usage:
 Common:
  GLOBAL:0
 Function _Z5tiledv:
  REG:128 STACK:32 SHARED:17664 LOCAL:0 CONSTANT[2]:8 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z4normv:
  REG:21 STACK:0 SHARED:1152 LOCAL:0 CONSTANT[0]:616 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_80
 Function _Z4normv:
  REG:24 STACK:0 SHARED:0 LOCAL:16 CONSTANT[0]:616 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

ELF_INFO = """
Fatbin elf code:
================
arch = sm_90

.nv.info._Z5tiledv
\t<0x1>
\tAttribute:\tEIATTR_MAXREG_COUNT
\tFormat:\tEIFMT_HVAL
\tValue:\t0x80
\t<0x2>
\tAttribute:\tEIATTR_MAX_THREADS
\tFormat:\tEIFMT_SVAL
\tValue:\t0x100 0x1 0x1 

.nv.info._Z4normv
\t<0x1>
\tAttribute:\tEIATTR_MAXREG_COUNT
\tFormat:\tEIFMT_HVAL
\tValue:\t0xff
.text._Z4normv
\tAttribute:\tEIATTR_MAX_THREADS
\tValue:\t0x400 0x1 0x1
"""  # noqa: W291  (recorded output: cuobjdump ends the line with a space)

PTXAS = """
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z5tiledv' for 'sm_90'
ptxas info    : Function properties for _Z5tiledv
    32 bytes stack frame, 28 bytes spill stores, 28 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 32 bytes cumulative stack size, 17664 bytes smem, 592 bytes cmem[0]
ptxas info    : Compiling entry function '_Z4normv' for 'sm_90'
ptxas info    : Function properties for _Z4normv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 21 registers, used 1 barriers, 1152 bytes smem, 616 bytes cmem[0]
"""  # noqa: E501  (recorded output, verbatim)


def test_parse_resource_usage():
    ks = ru.parse_resource_usage(RES_USAGE)
    assert [(k.arch, k.name, k.registers, k.stack, k.local, k.shared) for k in ks] == [
        ("sm_90", "_Z5tiledv", 128, 32, 0, 17664),
        ("sm_90", "_Z4normv", 21, 0, 0, 1152),
        ("sm_80", "_Z4normv", 24, 0, 16, 0),
    ]
    assert [k.uses_local_memory for k in ks] == [True, False, True]


def test_parse_elf_bounds_reads_only_the_kernels_info_section():
    b = ru.parse_elf_bounds(ELF_INFO.splitlines(True))
    assert b[("sm_90", "_Z5tiledv")] == {"max_registers": 128, "max_threads": 256}
    assert b[("sm_90", "_Z4normv")] == {
        "max_registers": 255
    }  # the .text section's lines are not its info


def test_parse_ptxas_separates_spills_from_the_stack_frame():
    ks = ru.parse_ptxas(PTXAS)
    assert [
        (k.name, k.registers, k.stack, k.spill_stores, k.spill_loads, k.shared) for k in ks
    ] == [("_Z5tiledv", 128, 32, 28, 28, 17664), ("_Z4normv", 21, 0, 0, 0, 1152)]
    assert [k.uses_local_memory for k in ks] == [True, False]


def test_problems_register_file_and_cap():
    ok = ru.KernelUsage(arch="sm_90", name="k", registers=128, max_threads=256, max_registers=128)
    assert ru.problems(ok) == []  # 128 x 256 = 32768
    too_many = ru.KernelUsage(arch="sm_90", name="k", registers=72, max_threads=1024)
    assert any("cannot launch" in p for p in ru.problems(too_many))  # 72 x 1024 > 65536
    assert ru.allocated_registers(65) == 72 and ru.allocated_registers(64) == 64
    over_cap = ru.KernelUsage(
        arch="sm_90", name="k", registers=130, max_threads=128, max_registers=128
    )
    assert any("cap" in p for p in ru.problems(over_cap))
    big_smem = ru.KernelUsage(arch="sm_90", name="k", registers=32, shared=64 * 1024)
    assert any("shared" in p for p in ru.problems(big_smem))


# ---- the built extension ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernels():
    spec = importlib.util.find_spec("pyworkloads._cuda")
    if spec is None or not spec.origin:
        pytest.skip("the CUDA extension was not built (no nvcc at configure time)")
    tool = ru.find_cuobjdump()
    if tool is None:
        pytest.skip(
            "cuobjdump not found (PATH, CUDA_HOME, /usr/local/cuda, "
            "or pip install nvidia-cuda-cuobjdump)"
        )
    usages = ru.from_binary(Path(spec.origin), tool)
    assert usages, f"cuobjdump listed no kernels in {spec.origin}: did the output format change?"
    return usages


def test_extension_has_the_kernel_families(kernels):
    # Robust to new kernels and versions: only the families every build has.
    names = " ".join(k.short for k in kernels)
    for family in ("matmul_", "attention_", "norm_", "strided_copy"):
        assert family in names, f"no {family}* kernel in the binary"
    archs = {k.arch for k in kernels}
    assert archs, "no architecture headers parsed"


def test_no_kernel_uses_local_memory(kernels):
    bad = sorted(
        {
            f"{k.arch} {k.short}: stack {k.stack} B, local {k.local} B"
            for k in kernels
            if k.uses_local_memory
        }
    )
    assert not bad, (
        "kernels spilling registers (or keeping arrays) in local memory:\n  " + "\n  ".join(bad)
    )


def test_every_kernel_fits_its_launch_bounds(kernels):
    bounded = [k for k in kernels if k.max_threads is not None]
    assert bounded, "no __launch_bounds__ found: did cuobjdump --dump-elf change format?"
    bad = sorted(
        {
            f"{k.arch} {k.short}: {'; '.join(p for p in ru.problems(k) if 'local memory' not in p)}"
            for k in kernels
            if any("local memory" not in p for p in ru.problems(k))
        }
    )
    assert not bad, "kernels that cannot launch as compiled:\n  " + "\n  ".join(bad)
