"""A NumPy transcription of norm_rows (norms_3_rows.cuh, version 3) at the level of threads, packs
and shuffles, run against reference.rms_norm / reference.layer_norm in float64.

It checks the kernel's bookkeeping:
  * the launcher's choice (launch / launch_warp_rows): v3 only for 16-byte-aligned rows of at most
    256 * 8 packs, a warp per row up to 32 * 8 packs, else a block of 128 threads with 4 packs each
    (up to 512 packs), of 128 threads with 8 (up to 1024) or of 256 with 8;
    kPacks in {1, 2, 4, 8}, team * kPacks >= n;
  * for every D in 1..20000 and both element sizes (4: fp32, 2: fp16/bf16): thread t of a team
    holding packs t + k * team (k < kPacks, guarded by i < n) covers each of the row's n packs
    exactly once;
  * warp rows: blocks of 8 warps over ceil(rows / 8) blocks give every row exactly one warp, and
    the rows past the end are left by whole warps (the row index does not depend on the lane);
  * the numerics: per-thread float32 sums in the kernel's order (packs, then elements), the
    __shfl_xor butterfly of warp_sum and v2's block_sum (warp sums -> one slot per warp -> every
    warp sums the slots), LayerNorm's mean then centred variance, and the final sweep with weight
    and bias, with storage rounding to float32 / float16 / bfloat16.
It does not run the CUDA code: keep it in step with the kernel when either changes.
Usage: python dev/cuda/emulate_norms_rows.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pyworkloads.kernels import reference  # noqa: E402

# the kernel's constants
ROWS_THREADS, MAX_PACKS = 256, 8


def choose(D, elem_size, aligned=True):
    """The launcher's decision: ("warp", kPacks, 32), ("block", kPacks, threads) or ("v2", None,
    None).
    """
    kvec = 16 // elem_size
    vec = D % kvec == 0 and aligned
    per_row = D // kvec if vec else D
    if not (vec and per_row <= ROWS_THREADS * MAX_PACKS):
        return "v2", None, None
    if per_row <= 32 * MAX_PACKS:
        kpacks = 1 if per_row <= 32 else 2 if per_row <= 64 else 4 if per_row <= 128 else 8
        return "warp", kpacks, 32
    if per_row <= 128 * 4:
        return "block", 4, 128
    return "block", MAX_PACKS, 128 if per_row <= 128 * MAX_PACKS else 256


def check_coverage():
    """Every pack of every row width owned exactly once; the launch shapes within the kernel's
    limits.
    """
    counted = {"warp": 0, "block": 0, "v2": 0}
    for elem_size in (4, 2):
        kvec = 16 // elem_size
        for D in range(1, 20001):
            kind, kpacks, team = choose(D, elem_size)
            counted[kind] += 1
            if kind == "v2":
                assert D % kvec or D // kvec > ROWS_THREADS * MAX_PACKS, (D, elem_size)
                continue
            n = D // kvec
            assert kpacks in (1, 2, 4, 8) and team in (32, 128, 256) and team * kpacks >= n, (
                D,
                kpacks,
                team,
            )
            assert team <= ROWS_THREADS  # __launch_bounds__(256)
            if kind == "warp":
                assert kpacks == 1 or 32 * (kpacks // 2) < n  # the smallest kPacks that fits
            else:
                assert n > 32 * MAX_PACKS  # longer than a warp's 8 packs
                assert (kpacks, team) == (
                    4,
                    128,
                ) or 128 * 4 < n  # 128 x 4 wherever it covers the row
                assert team == 128 or 128 * MAX_PACKS < n  # 128 threads where 8 packs cover it
                assert -(-n // team) > kpacks // 2  # so kPacks slots are needed, not half
            t, k = np.meshgrid(np.arange(team), np.arange(kpacks), indexing="ij")
            i = (t + k * team).ravel()
            owners = np.bincount(i[i < n], minlength=n)
            assert owners.shape == (n,) and np.all(owners == 1), (D, elem_size)
            assert i.max() < 2**31 and n * kvec == D  # int indices, the whole row
    # the grids of warp rows: block b, warp w -> row 8 b + w; rows past the end leave as whole warps
    for rows in list(range(0, 70)) + [65535, 65536, 65537, 10**6 + 3]:
        grid = max(1, -(-rows // 8))  # grid_dim clamps 0 to 1
        b, tid = np.meshgrid(np.arange(grid), np.arange(ROWS_THREADS), indexing="ij")
        row = b * (ROWS_THREADS // 32) + (tid >> 5)
        live = row < rows
        assert np.all(
            np.bincount(row[live].ravel(), minlength=rows)[:rows] == 32
        )  # 32 lanes, one warp
        per_warp = live.reshape(grid, ROWS_THREADS // 32, 32)
        assert np.all(per_warp.all(axis=2) | ~per_warp.any(axis=2))  # all lanes or none
    return counted


# ---- numerics -----------------------------------------------------------------------------------
def to_bf16(a):
    """float32 -> bfloat16 (round to nearest even), returned widened back to float32."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def store(a, dtype):
    if dtype == "bf16":
        return to_bf16(a)
    return np.asarray(a, np.float32).astype(dtype).astype(np.float32)


def warp_sum(v):
    """__shfl_xor_sync butterfly over the last axis (32 lanes), float32 at every step."""
    lanes = np.arange(32)
    for o in (16, 8, 4, 2, 1):
        v = (v + v[..., lanes ^ o]).astype(np.float32)
    return v


def row_sum(acc, kind):
    """acc: [rows, team] float32 per-thread partials -> [rows] as every thread of the team sees
    it.
    """
    if kind == "warp":
        return warp_sum(acc)[:, 0]
    rows, team = acc.shape
    warps = team // 32
    slots = warp_sum(acc.reshape(rows, warps, 32))[:, :, 0]  # lane 0 of each warp writes its slot
    lane_vals = np.zeros((rows, 32), np.float32)
    lane_vals[:, :warps] = slots  # lane < warps ? slots[lane] : 0
    return warp_sum(lane_vals)[:, 0]


def norm_rows(x, w, b, eps, rms, elem_size, dtype):
    """The kernel on x [rows, D] (values already in the storage dtype, held as float32)."""
    rows, D = x.shape
    kind, kpacks, team = choose(D, elem_size)
    assert kind in ("warp", "block")
    kvec = 16 // elem_size
    n = D // kvec
    packs = np.zeros((rows, kpacks * team, kvec), np.float32)
    packs[:, :n] = x.reshape(rows, n, kvec)  # [rows, n, kvec]
    regs = packs.reshape(rows, kpacks, team, kvec)  # slot k of thread t = pack t + k*team
    valid = (np.arange(team)[None, :] + np.arange(kpacks)[:, None] * team) < n  # [kpacks, team]
    eps32 = np.float32(eps)
    mu = np.zeros(rows, np.float32)
    if not rms:
        acc = np.zeros((rows, team), np.float32)
        for k in range(kpacks):
            for e in range(kvec):
                acc = np.where(valid[k], acc + regs[:, k, :, e], acc).astype(np.float32)
        mu = (row_sum(acc, kind) / np.float32(D)).astype(np.float32)
    acc = np.zeros((rows, team), np.float32)
    for k in range(kpacks):
        for e in range(kvec):
            c = (regs[:, k, :, e] - mu[:, None]).astype(np.float32)
            acc = np.where(valid[k], acc + c * c, acc).astype(np.float32)
    inv = (1 / np.sqrt((row_sum(acc, kind) / np.float32(D) + eps32).astype(np.float32))).astype(
        np.float32
    )
    y = ((x - mu[:, None]) * inv[:, None]).astype(np.float32)  # [rows, D]
    if w is not None:
        y = (y * w).astype(np.float32)
    if b is not None:
        y = (y + b).astype(np.float32)
    return store(y, dtype)


def check_numerics():
    rng = np.random.default_rng(0)
    # (rows, D) per element size: every kPacks of the warp rows, every block size, partial last
    # slots
    cases = {
        4: [
            (9, 4),
            (3, 100),
            (5, 200),
            (9, 500),
            (10, 1024),
            (3, 1028),
            (2, 2052),
            (2, 4096),
            (2, 5000),
            (1, 8192),
        ],
        2: [
            (9, 8),
            (3, 200),
            (5, 512),
            (9, 1000),
            (10, 2048),
            (3, 2056),
            (2, 4104),
            (2, 8192),
            (2, 10000),
            (1, 16384),
        ],
    }
    worst = {}
    for elem_size, dtypes in ((4, (np.float32,)), (2, (np.float16, "bf16"))):
        for dtype in dtypes:
            name = "bf16" if dtype == "bf16" else np.dtype(dtype).name
            u = 2.0**-23 if name == "float32" else 2.0**-10 if name == "float16" else 2.0**-7
            for rows, D in cases[elem_size]:
                x = store(
                    rng.standard_normal((rows, D)) * 3 + 1 + (100 if D % 3 == 0 else 0), dtype
                )
                w, b = store(rng.standard_normal(D), dtype), store(rng.standard_normal(D), dtype)
                x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
                for label, got, want in (
                    (
                        "rms",
                        norm_rows(x, w, None, 1e-6, True, elem_size, dtype),
                        reference.rms_norm(x64, w64, 1e-6),
                    ),
                    (
                        "ln",
                        norm_rows(x, w, b, 1e-5, False, elem_size, dtype),
                        reference.layer_norm(x64, w64, b64, 1e-5),
                    ),
                    (
                        "ln-nowb",
                        norm_rows(x, None, None, 1e-5, False, elem_size, dtype),
                        reference.layer_norm(x64, None, None, 1e-5),
                    ),
                ):
                    err = np.abs(got - want)
                    # storage rounding of y (half an ulp) plus float32 accumulation over D elements
                    tol = (u + 2.0**-24 * 8 * np.sqrt(D)) * (np.abs(want) + 1)
                    assert np.all(err <= tol), (name, label, rows, D, float(np.max(err / tol)))
                    key = (name, label)
                    worst[key] = max(worst.get(key, 0.0), float(np.max(err / (np.abs(want) + 1))))
    return worst


if __name__ == "__main__":
    counted = check_coverage()
    print(
        "coverage: D = 1..20000 x {fp32, 16-bit}: every pack owned once;",
        f"{counted['warp']} widths warp rows, {counted['block']} block rows, {counted['v2']} fall "
        "back to v2",
    )
    for (name, label), err in sorted(check_numerics().items()):
        print(f"{name:8s} {label:8s} max |y - ref| / (|ref| + 1) = {err:.2e}")
