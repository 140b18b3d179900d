"""``pyworkloads run whisper``: the transcript writers (pyworkloads/models/whisper/output.py) read
back by the ``srt`` and ``webvtt-py`` parsers, the command line's options (openai-whisper's,
dashed and underscored) and what it passes to ``transcribe()``, and end-to-end runs on the
committed tiny checkpoint."""
from __future__ import annotations

import argparse
import csv
import datetime
import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FIXTURES

from pyworkloads import cli
from pyworkloads.models import whisper as W
from pyworkloads.models.whisper import cli as wcli
from pyworkloads.models.whisper import output as O
from pyworkloads.models.whisper.transcribe import Segment, Transcription

srt = pytest.importorskip("srt", reason="the SubRip test parser: pip install srt==3.5.3")
webvtt = pytest.importorskip("webvtt", reason="the WebVTT test parser: pip install "
                                              "webvtt-py==0.6.0")

FIX = FIXTURES / "whisper"


def _transcript(words: bool = False) -> Transcription:
    """Three segments: plain text, one past an hour with an arrow, a tab and non-ASCII text,
    and one without text; with ``words``, word timestamps on the first two."""
    segs = [Segment(0.0, 1.5, " Hello world, again.", [1, 2, 3]),
            Segment(1.5, 3725.5004, " Ünïcödé --> arrows\tand tabs", [4, 5]),
            Segment(3725.6, 3726.0, " ", [])]
    if words:
        segs[0].words = [dict(word=" Hello", start=0.1, end=0.5, probability=0.9),
                         dict(word=" world,", start=0.5, end=0.9, probability=0.8),
                         dict(word=" again.", start=0.9, end=1.4, probability=0.7)]
        segs[1].words = [SimpleNamespace(word=" Ünïcödé", start=1.6, end=2.0, probability=0.5),
                         SimpleNamespace(word=" -->", start=2.0, end=2.1, probability=0.5),
                         SimpleNamespace(word=" arrows\tand tabs", start=2.1, end=3725.0,
                                         probability=0.5)]
        segs[2].words = []
    return Transcription(text=" Hello world, again. Ünïcödé --> arrows\tand tabs ",
                         segments=segs, language="en")


def _td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def test_format_timestamp():
    assert O.format_timestamp(0) == "00:00.000"
    assert O.format_timestamp(3725.5004) == "01:02:05.500"
    assert O.format_timestamp(59.9996) == "01:00.000"                     # rounding carries
    assert O.format_timestamp(1.5, always_include_hours=True, decimal_marker=",") == \
        "00:00:01,500"
    with pytest.raises(ValueError, match="non-negative"):
        O.format_timestamp(-0.01)
    with pytest.raises(ValueError, match="non-negative"):
        O.format_timestamp(float("nan"))


def test_every_format_reads_back(tmp_path):
    paths = O.write_all(_transcript(), "/some/where/talk.flac", tmp_path / "out")
    assert [p.name for p in paths] == [f"talk.{f}" for f in ("txt", "vtt", "srt", "tsv", "json")]
    files = {p.suffix[1:]: p for p in paths}

    subs = list(srt.parse(files["srt"].read_text(encoding="utf-8")))
    assert [s.index for s in subs] == [1, 2]                    # the empty segment has no cue
    assert [(s.start, s.end) for s in subs] == [(_td(0), _td(1.5)), (_td(1.5), _td(3725.5))]
    assert [s.content for s in subs] == ["Hello world, again.", "Ünïcödé -> arrows\tand tabs"]
    assert "00:00:01,500 --> 01:02:05,500" in files["srt"].read_text(encoding="utf-8")

    vtt = webvtt.read(str(files["vtt"]))
    assert [(c.start, c.end, c.text) for c in vtt.captions] == [
        ("00:00:00.000", "00:00:01.500", "Hello world, again."),
        ("00:00:01.500", "01:02:05.500", "Ünïcödé -> arrows\tand tabs")]
    assert files["vtt"].read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00.000 --> ")

    with open(files["tsv"], encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows == [["start", "end", "text"], ["0", "1500", "Hello world, again."],
                    ["1500", "3725500", "Ünïcödé --> arrows and tabs"],
                    ["3725600", "3726000", ""]]

    data = json.loads(files["json"].read_text(encoding="utf-8"))
    assert data["language"] == "en" and data["text"] == _transcript().text
    assert [(s["id"], s["start"], s["end"], s["tokens"]) for s in data["segments"]] == [
        (0, 0.0, 1.5, [1, 2, 3]), (1, 1.5, 3725.5004, [4, 5]), (2, 3725.6, 3726.0, [])]
    assert "words" not in data["segments"][0]

    assert files["txt"].read_text(encoding="utf-8").splitlines() == [
        "Hello world, again.", "Ünïcödé --> arrows\tand tabs", ""]


def test_word_timestamps_in_subtitles_and_json(tmp_path):
    """With words, a cue runs from its first word to its last, and max_line_width breaks its
    text between words."""
    paths = O.write_result(_transcript(words=True), "talk.wav", "all", tmp_path,
                           max_line_width=14)
    files = {p.suffix[1:]: p for p in paths}
    subs = list(srt.parse(files["srt"].read_text(encoding="utf-8")))
    assert [(s.start, s.end) for s in subs] == [(_td(0.1), _td(1.4)), (_td(1.6), _td(3725.0))]
    assert subs[0].content == "Hello world,\nagain."
    assert subs[1].content == "Ünïcödé ->\narrows\tand tabs"
    vtt = webvtt.read(str(files["vtt"]))
    assert [c.lines for c in vtt.captions] == [["Hello world,", "again."],
                                               ["Ünïcödé ->", "arrows\tand tabs"]]
    data = json.loads(files["json"].read_text(encoding="utf-8"))
    assert data["segments"][0]["words"][1] == dict(word=" world,", start=0.5, end=0.9,
                                                   probability=0.8)
    assert data["segments"][2]["words"] == []
    # no width: one line per cue, the words as spoken
    one_line = O.write_result(_transcript(words=True), "talk.wav", "srt", tmp_path / "wide")
    assert [s.content for s in srt.parse(one_line[0].read_text(encoding="utf-8"))] == [
        "Hello world, again.", "Ünïcödé -> arrows\tand tabs"]


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="output_format"):
        O.write_result(_transcript(), "a.wav", "docx", tmp_path)
    with pytest.raises(ValueError, match="max_line_width"):
        O.write_result(_transcript(), "a.wav", "srt", tmp_path, max_line_width=0)
    bad = _transcript()
    bad.segments[0].start = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        O.write_result(bad, "a.wav", "vtt", tmp_path)


# ---------------------------------------------------------------------------------------------
# command-line options
# ---------------------------------------------------------------------------------------------
def _parse(*argv):
    parser = argparse.ArgumentParser(prog="whisper", exit_on_error=False)
    W.add_run_arguments(parser)
    return parser.parse_args(["--model", "m", "a.wav", *argv])


def test_openai_underscore_spellings_are_aliases():
    dashed = _parse("--beam-size", "5", "--temperature", "0.2",
                    "--temperature-increment-on-fallback", "0.2",
                    "--compression-ratio-threshold", "2.4", "--logprob-threshold", "-1",
                    "--no-speech-threshold", "0.6", "--no-condition-on-previous-text",
                    "--initial-prompt", "Hi.", "--word-timestamps", "--output-format", "srt",
                    "--output-dir", "out", "--max-line-width", "40")
    underscored = _parse("--beam_size", "5", "--temperature", "0.2",
                         "--temperature_increment_on_fallback", "0.2",
                         "--compression_ratio_threshold", "2.4", "--logprob_threshold", "-1",
                         "--no_speech_threshold", "0.6", "--condition_on_previous_text",
                         "False", "--initial_prompt", "Hi.", "--word_timestamps", "True",
                         "--output_format", "srt", "--output_dir", "out",
                         "--max_line_width", "40")
    assert vars(dashed) == vars(underscored)
    assert wcli.transcribe_options(dashed) == dict(
        beam_size=5, compression_ratio_threshold=2.4, logprob_threshold=-1.0,
        no_speech_threshold=0.6, condition_on_previous_text=False, initial_prompt="Hi.",
        word_timestamps=True, temperature=(0.2, 0.4, 0.6, 0.8, 1.0))


def test_options_left_out_are_not_passed():
    """Nothing set: transcribe() keeps its own defaults; "None" switches a threshold off the
    openai-whisper way (and is then not passed either)."""
    assert wcli.transcribe_options(_parse()) == {}
    assert wcli.transcribe_options(_parse("--logprob_threshold", "None", "--beam_size",
                                          "None")) == {}
    assert wcli.transcribe_options(_parse("--temperature", "0.5")) == dict(temperature=0.5)
    assert wcli.transcribe_options(_parse("--temperature_increment_on_fallback", "0.25")) == \
        dict(temperature=(0.0, 0.25, 0.5, 0.75, 1.0))
    assert wcli.transcribe_options(_parse("--word_timestamps", "false")) == dict(
        word_timestamps=False)
    assert _parse("-f", "all", "-o", "x").output_format == "all"


def test_bad_options():
    with pytest.raises(argparse.ArgumentError, match="True or False"):
        _parse("--word_timestamps", "maybe")
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parse("--output-format", "docx")
    with pytest.raises(argparse.ArgumentError, match="int"):
        _parse("--beam-size", "two")
    with pytest.raises(ValueError, match="--max-line-width needs --word-timestamps"):
        wcli.transcribe_options(_parse("--max-line-width", "20"))
    with pytest.raises(ValueError, match="--max-line-width must be a positive"):
        wcli.transcribe_options(_parse("--word-timestamps", "--max-line-width", "0"))
    with pytest.raises(ValueError, match="increment"):
        wcli.transcribe_options(_parse("--temperature_increment_on_fallback", "0"))


class _FakeModel:
    """Stands in for a checkpoint: records what transcribe() was asked."""

    def __init__(self):
        self.calls = []

    def transcribe(self, path, **kwargs):
        self.calls.append((path, kwargs))
        return _transcript(words=bool(kwargs.get("word_timestamps")))


@pytest.mark.parametrize("extra, written", [
    ((), []),                                                        # print only, as before
    (("-o", "{tmp}/subs"), ["subs/talk.txt", "subs/talk.vtt", "subs/talk.srt",
                            "subs/talk.tsv", "subs/talk.json"]),      # a folder: every format
    (("-f", "vtt"), ["talk.vtt"]),                                   # a format: here
    (("-f", "srt", "-o", "{tmp}/x", "--word-timestamps", "--max-line-width", "14"),
     ["x/talk.srt"]),
])
def test_run_cli_passes_options_and_writes_files(tmp_path, monkeypatch, capsys, extra, written):
    fake = _FakeModel()
    monkeypatch.setattr(wcli, "from_pretrained", lambda path: fake)
    monkeypatch.chdir(tmp_path)
    args = _parse("--beam-size", "3", "--no-progress", *[e.format(tmp=tmp_path) for e in extra])
    args.audio = "talk.wav"
    assert wcli.run_cli(args) == 0
    path, kwargs = fake.calls[0]
    assert path == "talk.wav" and kwargs["beam_size"] == 3 and kwargs["progress"] is False
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert found == sorted(written)
    out = capsys.readouterr()
    assert "[00:00:00.000 --> 00:00:01.500] Hello world, again." in out.out
    assert out.err.count("wrote ") == len(written)
    if "--max-line-width" in extra:
        cue = next(srt.parse((tmp_path / "x" / "talk.srt").read_text(encoding="utf-8")))
        assert cue.content == "Hello world,\nagain."


# ---------------------------------------------------------------------------------------------
# end to end on the committed tiny checkpoint
# ---------------------------------------------------------------------------------------------
def test_end_to_end_greedy_writes_every_format(tmp_path, capsys):
    audio = FIX / "speech.wav"
    rc = cli.main(["run", "whisper", "--model", str(FIX / "tiny"), str(audio), "--language",
                   "en", "--no-progress", "--output-format", "all", "--output-dir",
                   str(tmp_path)])
    assert rc == 0
    res = W.from_pretrained(FIX / "tiny").transcribe(audio, language="en", progress=False)
    cues = [s for s in res.segments if s.text.strip()]
    assert cues                                                    # the check has something
    subs = list(srt.parse((tmp_path / "speech.srt").read_text(encoding="utf-8")))
    assert [s.content for s in subs] == [s.text.strip().replace("-->", "->") for s in cues]
    assert [s.start.total_seconds() for s in subs] == pytest.approx([s.start for s in cues],
                                                                    abs=5e-4)
    vtt = webvtt.read(str(tmp_path / "speech.vtt"))
    assert [c.text for c in vtt.captions] == [s.content for s in subs]
    data = json.loads((tmp_path / "speech.json").read_text(encoding="utf-8"))
    assert data["text"] == res.text and data["language"] == "en"
    assert [s["tokens"] for s in data["segments"]] == [list(s.tokens) for s in res.segments]
    assert "wrote " in capsys.readouterr().err


def test_end_to_end_word_timestamps_srt(tmp_path):
    """--word-timestamps through transcribe() (the tiny checkpoint lists no alignment heads:
    openai-whisper's default, the last half of the decoder's heads) into wrapped subtitles."""
    rc = cli.main(["run", "whisper", "--model", str(FIX / "tiny"), str(FIX / "speech.wav"),
                   "--language", "en", "--no-progress", "--word_timestamps", "True",
                   "--beam_size", "2", "--temperature", "0", "--max-line-width", "16",
                   "-f", "srt", "-o", str(tmp_path)])
    assert rc == 0
    subs = list(srt.parse((tmp_path / "speech.srt").read_text(encoding="utf-8")))
    assert subs and all(s.start <= s.end for s in subs)
    words = np.concatenate([s.content.split() for s in subs])
    assert len(words) >= 2
