"""A transcript written to files in openai-whisper's formats (its ``utils.py`` writers): plain
text (.txt, a segment per line), SubRip subtitles (.srt), WebVTT (.vtt), tab-separated values
(.tsv, integer milliseconds) and JSON (text, segments, language).

Subtitles have one cue per segment.  When the segments carry word timestamps, a cue runs from
its first word's start to its last word's end, and ``max_line_width`` breaks its text into
lines of at most that many characters (between words); otherwise a cue spans its segment.
Segments without text make no cue.
"""
from __future__ import annotations

import json
from pathlib import Path

FORMATS = ("txt", "vtt", "srt", "tsv", "json")


def format_timestamp(seconds: float, always_include_hours: bool = False,
                     decimal_marker: str = ".") -> str:
    """Seconds -> [HH:]MM:SS.mmm, rounded to the millisecond (SubRip: hours always, decimal
    comma)."""
    if not seconds >= 0:
        raise ValueError(f"a timestamp must be a non-negative number of seconds, got {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1_000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _field(item, key: str):
    """A field of a segment or word given as a dict or as an object with attributes."""
    return item[key] if isinstance(item, dict) else getattr(item, key)


def as_dict(result) -> dict:
    """A :class:`~pyworkloads.models.whisper.transcribe.Transcription` (or a dict of the same
    shape) -> the JSON-ready dict openai-whisper returns: text, segments (id, start, end, text,
    tokens, and words when present), language."""
    segments = []
    for i, seg in enumerate(_field(result, "segments")):
        d = dict(id=i, start=float(_field(seg, "start")), end=float(_field(seg, "end")),
                 text=str(_field(seg, "text")),
                 tokens=[int(t) for t in (_optional(seg, "tokens") or [])])
        words = _optional(seg, "words")
        if words is not None:
            d["words"] = [dict(word=str(_field(w, "word")), start=float(_field(w, "start")),
                               end=float(_field(w, "end")),
                               probability=float(_field(w, "probability"))) for w in words]
        segments.append(d)
    return dict(text=str(_field(result, "text")), segments=segments,
                language=_optional(result, "language"))


def _optional(item, key: str):
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _wrap(words: list[dict], max_line_width: int | None) -> str:
    """Words (with their leading spaces) -> the cue's text, a new line before a word that would
    pass ``max_line_width`` characters."""
    lines: list[str] = []
    for w in words:
        word = w["word"]
        if lines and lines[-1] and (max_line_width is None
                                    or len(lines[-1]) + len(word) <= max_line_width):
            lines[-1] += word
        elif lines and not lines[-1]:               # the line so far was only spaces
            lines[-1] = word.strip()
        else:
            lines.append(word.strip())
    return "\n".join(lines)


def subtitles(result, max_line_width: int | None = None):
    """The cues of a transcript: (start, end, text) per segment with text, times in seconds."""
    for seg in as_dict(result)["segments"]:
        words = seg.get("words")
        if words:
            start, end, text = words[0]["start"], words[-1]["end"], _wrap(words, max_line_width)
        else:
            start, end, text = seg["start"], seg["end"], seg["text"].strip()
        text = text.replace("-->", "->")            # the cue-timing arrow may not appear in text
        if text:
            yield start, end, text


def write_txt(result, file, **_) -> None:
    for seg in as_dict(result)["segments"]:
        print(seg["text"].strip(), file=file)


def write_vtt(result, file, max_line_width: int | None = None) -> None:
    print("WEBVTT\n", file=file)
    for start, end, text in subtitles(result, max_line_width):
        print(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n", file=file)


def write_srt(result, file, max_line_width: int | None = None) -> None:
    for i, (start, end, text) in enumerate(subtitles(result, max_line_width), start=1):
        start, end = (format_timestamp(t, True, ",") for t in (start, end))
        print(f"{i}\n{start} --> {end}\n{text}\n", file=file)


def write_tsv(result, file, **_) -> None:
    """start<TAB>end<TAB>text, times in integer milliseconds (no decimal separator for a locale
    to change)."""
    print("start", "end", "text", sep="\t", file=file)
    for seg in as_dict(result)["segments"]:
        text = seg["text"].strip().replace("\t", " ")
        print(round(1000 * seg["start"]), round(1000 * seg["end"]), text, sep="\t", file=file)


def write_json(result, file, **_) -> None:
    json.dump(as_dict(result), file, ensure_ascii=False)


WRITERS = {"txt": write_txt, "vtt": write_vtt, "srt": write_srt, "tsv": write_tsv,
           "json": write_json}


def write_result(result, audio_path, output_format: str = "all", output_dir=".",
                 max_line_width: int | None = None) -> list[Path]:
    """Write ``result`` as ``output_dir/<audio file name without extension>.<format>`` for one
    format of :data:`FORMATS` or "all" -> the paths written (UTF-8)."""
    if output_format != "all" and output_format not in WRITERS:
        raise ValueError(f"output_format must be one of {', '.join(FORMATS)} or all, got "
                         f"{output_format!r}")
    if max_line_width is not None and (isinstance(max_line_width, bool)
                                       or not isinstance(max_line_width, int)
                                       or max_line_width < 1):
        raise ValueError(f"max_line_width must be a positive integer, got {max_line_width!r}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    formats = FORMATS if output_format == "all" else (output_format,)
    paths = []
    for fmt in formats:
        path = out / f"{Path(audio_path).stem}.{fmt}"
        with open(path, "w", encoding="utf-8") as f:
            WRITERS[fmt](result, f, max_line_width=max_line_width)
        paths.append(path)
    return paths


def write_all(result, audio_path, output_dir=".", max_line_width: int | None = None) -> list[Path]:
    """Every format of :data:`FORMATS` -> the paths written."""
    return write_result(result, audio_path, "all", output_dir, max_line_width)
