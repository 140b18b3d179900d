"""Helpers shared by the kernel property tests: the compiled backends to check, array layouts
(strided and transposed views with the same values) and error bounds scaled by reduction length.

The cpp backend is compiled once per ISA level (pyworkloads/_kernels.py); each level this CPU can
execute is a backend of its own here, ``"cpp:avx512"``, ``"cpp:avx2"``, ``"cpp:portable"``, so
every kernel path this machine can run is tested (an AVX2 machine compiles the AVX-512 path but
cannot run it: `pyworkloads info` and the test ids say which were run)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import strategies as st

import pyworkloads.kernels as K


def _compiled() -> list[str]:
    out = []
    for b in K.available():
        if b == "cpp":
            out += [f"cpp:{isa}" for isa in K.cpu_isas()]
        elif b != "numpy":
            out.append(b)
    return out


# Every backend except the reference: the cpp backend at each ISA level this CPU runs (and cuda
# when a GPU is present).
COMPILED = _compiled()


@contextlib.contextmanager
def on_backend(backend: str):
    """Run the kernel calls inside on `backend` ("cpp:avx2" selects that ISA's cpp kernels)."""
    name, _, isa = backend.partition(":")
    with K.use_backend(name), (K.use_cpu_isa(isa) if isa else contextlib.nullcontext()):
        yield name
backends = pytest.mark.parametrize(
    "backend",
    COMPILED
    or [pytest.param("cpp", marks=pytest.mark.skip(reason="no compiled backend is available"))],
)


def backends_with(op: str):
    """Like `backends`, for an op not every compiled backend implements (gelu has no CUDA kernel:
    K.gelu runs the NumPy reference there, so that backend is skipped with the reason)."""
    import importlib

    params = []
    for b in COMPILED:
        mod = importlib.import_module(f"pyworkloads.kernels.{b.partition(':')[0]}_backend")
        has = hasattr(mod, op)
        params.append(
            b
            if has
            else pytest.param(
                b,
                marks=pytest.mark.skip(
                    reason=f"the {b} backend has no {op} kernel (the NumPy reference runs it)"
                ),
            )
        )
    return pytest.mark.parametrize(
        "backend",
        params
        or [pytest.param("cpp", marks=pytest.mark.skip(reason="no compiled backend is available"))],
    )


EPS32 = float(np.finfo(np.float32).eps)
LAYOUTS = ("c", "f", "strided", "reversed")


def laid_out(x: np.ndarray, layout: str) -> np.ndarray:
    """The same values as x in another memory layout: C order, transposed last two axes
    (Fortran-like, as `W.T` arrives), every other element of a larger buffer, or negative strides.
    """
    if layout == "c" or x.ndim < 2:
        return np.ascontiguousarray(x)
    if layout == "f":
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
    if layout == "strided":
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
        big[..., 1::2] = x
        return big[..., 1::2]
    if layout == "reversed":
        return np.ascontiguousarray(x[..., ::-1, ::-1])[..., ::-1, ::-1]
    raise ValueError(layout)


def dims(*special: int, lo: int = 0, hi: int = 40):
    """A dimension: small random sizes, plus the given edge sizes (block boundaries +-1)."""
    return st.one_of(st.integers(lo, hi), st.sampled_from([s for s in special if s >= lo]))


def run(backend: str, op: str, *args, **kwargs) -> np.ndarray:
    with on_backend(backend):
        return np.asarray(getattr(K, op)(*args, **kwargs))


def assert_within(got: np.ndarray, want: np.ndarray, bound) -> None:
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want)
    ok = err <= bound
    if not np.all(ok):
        i = np.unravel_index(np.argmax(~ok), ok.shape)
        b = bound[i] if np.ndim(bound) else bound
        raise AssertionError(
            f"at {i}: got {got[i]}, want {want[i]}, error {err[i]:.3g} > bound {b:.3g}"
        )


def assert_same_values(got, want, bound) -> None:
    """got equals want where want is NaN or infinite (same places, same signs of infinity) and
    lies within `bound` of it elsewhere."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    for what, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        differ = test(got) != test(want)
        if differ.any():
            i = tuple(int(t) for t in np.argwhere(differ)[0])
            raise AssertionError(
                f"{what} at {int(differ.sum())} of {differ.size} places differ, first at {i}: "
                f"got {got[i]}, want {want[i]}"
            )
    finite = np.isfinite(want)
    assert_within(np.where(finite, got, 0.0), np.where(finite, want, 0.0), bound)
