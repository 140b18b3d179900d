"""Build the API reference from the docstrings with pdoc: every module of pyworkloads and
costmodel, as HTML under the given folder (default build/docs).

    python docs/build.py [OUTPUT_DIR]

A module that fails to import fails the build, so CI runs this as a check.  It documents the
pyworkloads that Python imports: the installed one, or a checkout with ``PYTHONPATH=.``."""
from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pyworkloads", "costmodel")


def modules() -> list[str]:
    """Every Python module of the two packages, except the backend adapters (``*_backend``: they
    import a compiled extension that a machine may lack; ``pyworkloads.kernels`` documents the
    ops they provide)."""
    out = []
    for name in PACKAGES:
        pkg = __import__(name)
        out.append(name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{name}."):
            leaf = info.name.rsplit(".", 1)[-1]
            if leaf.startswith("_") or leaf.endswith("_backend"):
                continue
            out.append(info.name)
    return out


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "docs"
    mods = modules()
    pdoc.render.configure(docformat="restructuredtext", footer_text="pyworkloads")
    # pdoc also adds the submodules of each package it is given: a module listed twice is fine
    warnings.filterwarnings("ignore", message="The module specification")
    # run from a checkout, the names also match its folders: the imported package is documented
    warnings.filterwarnings("ignore", message="'(pyworkloads|costmodel)' may refer to either")
    pdoc.pdoc(*mods, output_directory=target)
    print(f"API reference of {len(mods)} modules in {target}/index.html")


if __name__ == "__main__":
    main()
