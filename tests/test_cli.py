"""The pyworkloads command line (run in-process through cli.main)."""
from __future__ import annotations

import pytest

import pyworkloads as pw
from pyworkloads import cli


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "demo", "run", "profile"):
        assert cmd in out


def test_info_lists_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy  available" in out
    for b in ("cpp", "cuda"):
        assert b in out
    if "cuda" not in pw.available():
        assert "cuda   unavailable" in out


def test_demo_runs_every_model_on_every_backend(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    for model in cli._model_modules():
        for backend in pw.available():
            assert any(line.split()[:2] == [model, backend]
                       for line in out.splitlines()), (model, backend, out)


def test_unavailable_backend_and_unknown_model_are_clean_errors(capsys):
    missing = [b for b in ("cpp", "cuda") if b not in pw.available()]
    if missing:
        assert cli.main(["demo", "--backends", missing[0]]) == 2
        assert f"backend '{missing[0]}' unavailable" in capsys.readouterr().err
    assert cli.main(["demo", "--models", "gpt5"]) == 2
    assert "unknown model 'gpt5'" in capsys.readouterr().err


def test_bad_thread_count(capsys):
    assert cli.main(["--threads", "0", "info"]) == 2
    assert "positive integer" in capsys.readouterr().err
