"""Writers of transcription results: plain text, JSON, SRT and WebVTT subtitles, TSV.

Times are computed from integer sample positions with integer arithmetic, so cues stay exact
over hours of audio. Files are written atomically: a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate
from pathlib import Path
from typing import Literal

from earshot.errors import ConfigError
from earshot.inference.results import Result, Segment

__all__ = ["FORMATS", "Cue", "expand_formats", "format_timestamp", "render", "safe_stem",
           "subtitle_cues", "unique_stems", "write_outputs"]

FORMATS: tuple[str, ...] = ("txt", "json", "srt", "vtt", "tsv")
_VTT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})  # cue text must not hold these


def _unknown_format(name: str) -> ConfigError:
    return ConfigError(f"option --output-format: unknown format {name!r} "
                       f"(choose from {', '.join(FORMATS)}, all; or a comma list)")


def expand_formats(spec: str) -> tuple[str, ...]:
    """The formats named by ``spec``: one of FORMATS, "all", or a comma list of them
    (duplicates dropped, order kept); a ConfigError naming --output-format otherwise."""
    names: list[str] = []
    for part in (p.strip().lower() for p in spec.split(",")):
        if part not in FORMATS and part != "all":
            raise _unknown_format(part)
        names.extend(FORMATS if part == "all" else [part])
    return tuple(dict.fromkeys(names))


@dataclass
class Cue:
    """One subtitle cue: samples [start_sample, end_sample) and its lines of text."""

    start_sample: int
    end_sample: int
    sample_rate: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _check_cue_options(width: int | None, words: int | None, max_lines: int) -> None:
    for name, value in (("max-line-width", width), ("max-words-per-line", words),
                        ("max-lines", max_lines)):
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"option --{name}: expected a positive integer, got {value!r}")


def _line_spans(tokens: list[str], width: int | None, words: int | None) -> list[tuple[int, int]]:
    """Greedy line breaking: [begin, end) token spans of at most ``width`` characters
    (a longer token gets a line to itself) and at most ``words`` tokens."""
    spans: list[tuple[int, int]] = []
    begin = chars = 0
    for i, token in enumerate(tokens):
        count = i - begin
        if count and ((width is not None and chars + 1 + len(token) > width)
                      or (words is not None and count >= words)):
            spans.append((begin, i))
            begin, count = i, 0
        chars = len(token) if count == 0 else chars + 1 + len(token)
    if tokens:
        spans.append((begin, len(tokens)))
    return spans


def _segment_cues(seg: Segment, width: int | None, words: int | None, max_lines: int) -> list[Cue]:
    """The cues of one segment, before cues are put in strict order."""
    if not seg.text.strip():
        return []
    rate = seg.sample_rate
    timed = [w for w in seg.words if w.text.strip()]
    tokens = [" ".join(w.text.split()) for w in timed] if timed else seg.text.split()
    spans = _line_spans(tokens, width, words)
    groups = [spans[k:k + max_lines] for k in range(0, len(spans), max_lines)]
    lines = [[" ".join(tokens[i:j]) for i, j in group] for group in groups]
    if timed:
        return [Cue(timed[g[0][0]].start_sample, timed[g[-1][1] - 1].end_sample, rate, text)
                for g, text in zip(groups, lines)]
    # No word times: share the segment's span among its cues by character count.
    chars = list(accumulate((sum(len(line) + 1 for line in text) for text in lines), initial=0))
    span = seg.end_sample - seg.start_sample
    at = [seg.start_sample + span * c // chars[-1] for c in chars]
    return [Cue(at[k], at[k + 1], rate, text) for k, text in enumerate(lines)]


def subtitle_cues(result: Result, max_line_width: int | None = None,
                  max_words_per_line: int | None = None, max_lines: int = 2) -> list[Cue]:
    """Subtitle cues of ``result``: each within one segment, timed by its first and last
    word (or by the segment, shared by character count, without word times), with at most
    ``max_lines`` lines of at most ``max_line_width`` characters and ``max_words_per_line``
    words. Cues are strictly ordered: each lasts at least 1 ms and starts at or after the
    previous one's end (a start is moved later where needed)."""
    _check_cue_options(max_line_width, max_words_per_line, max_lines)
    cues = [cue for seg in result.segments
            for cue in _segment_cues(seg, max_line_width, max_words_per_line, max_lines)]
    previous_end = 0
    for cue in cues:
        shortest = -(-cue.sample_rate // 1000)  # whole samples of at least 1 ms
        cue.start_sample = max(cue.start_sample, previous_end)
        cue.end_sample = max(cue.end_sample, cue.start_sample + shortest)
        previous_end = cue.end_sample
    return cues


def _milliseconds(time: int | float, sample_rate: int | None) -> int:
    """``time`` (samples at ``sample_rate``, or seconds without one) in whole ms, half up."""
    if sample_rate is not None and (not isinstance(time, int) or sample_rate < 1):
        raise ValueError(f"expected integer samples and a positive rate: {time!r}, {sample_rate!r}")
    if (sample_rate is None and not math.isfinite(time)) or time < 0:
        raise ValueError(f"not a finite time of at least 0: {time!r}")
    if sample_rate is None:  # seconds, as written in decimal
        return int((Decimal(repr(float(time))) * 1000).quantize(Decimal(1), ROUND_HALF_UP))
    return (2000 * int(time) + sample_rate) // (2 * sample_rate)


def format_timestamp(time: int | float, sample_rate: int | None = None,
                     style: Literal["srt", "vtt"] = "srt") -> str:
    """``time`` as SRT ``HH:MM:SS,mmm`` or VTT ``HH:MM:SS.mmm``, rounded to the nearest ms.
    ``time`` is integer samples when ``sample_rate`` is given (exact integer arithmetic),
    seconds otherwise. Hours are not capped at 99."""
    if style not in ("srt", "vtt"):
        raise ValueError(f"style must be 'srt' or 'vtt', got {style!r}")
    ms = _milliseconds(time, sample_rate)
    seconds, ms = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{',' if style == 'srt' else '.'}{ms:03d}"


def render(result: Result, fmt: str, *, max_line_width: int | None = None,
           max_words_per_line: int | None = None, max_lines: int = 2) -> str:
    """``result`` in format ``fmt`` (one of FORMATS). txt: one segment per line; json:
    ``Result.to_dict``; srt, vtt: subtitle cues (see ``subtitle_cues``); tsv: ``start``,
    ``end`` (integer ms) and ``text`` per segment. Segments with empty text are left out
    of txt, srt, vtt and tsv."""
    if fmt not in FORMATS:
        raise _unknown_format(fmt)
    texts = [(seg, " ".join(seg.text.split())) for seg in result.segments]
    if fmt == "txt":
        return "".join(f"{text}\n" for _, text in texts if text)
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "tsv":
        rows = [f"{_milliseconds(s.start_sample, s.sample_rate)}\t"
                f"{_milliseconds(s.end_sample, s.sample_rate)}\t{text}\n" for s, text in texts if text]
        return "start\tend\ttext\n" + "".join(rows)
    style: Literal["srt", "vtt"] = "srt" if fmt == "srt" else "vtt"
    blocks = []
    for number, cue in enumerate(subtitle_cues(result, max_line_width, max_words_per_line,
                                               max_lines), 1):
        times = (f"{format_timestamp(cue.start_sample, cue.sample_rate, style)} --> "
                 f"{format_timestamp(cue.end_sample, cue.sample_rate, style)}")
        if style == "srt":
            blocks.append(f"{number}\n{times}\n{cue.text}\n")
        else:
            blocks.append(f"{times}\n" + "".join(f"{x.translate(_VTT_ESCAPES)}\n" for x in cue.lines))
    return ("WEBVTT\n\n" if style == "vtt" else "") + "\n".join(blocks)


def safe_stem(input_id: str) -> str:
    """A file-system-safe stem for outputs of ``input_id``: its file name without extension,
    runs of other characters than letters, digits, ``_``, ``.`` and ``-`` made one ``-``
    ("<array 0>" gives "array-0"); "output" if nothing is left."""
    return _clean(Path(input_id.replace("\\", "/")).stem)


def _clean(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-.")[:120].strip("-.") or "output"


def unique_stems(ids: list[str]) -> list[str]:
    """``safe_stem`` of each id, made distinct (ignoring case, for case-insensitive file
    systems): an id whose stem is taken gets the first free ``-2``, ``-3``... suffix, in
    input order, that is no other id's own stem (a.wav from two folders: "a", "a-2")."""
    stems = [safe_stem(i) for i in ids]
    reserved = {s.casefold() for s in stems}
    used: set[str] = set()
    out = []
    for stem in stems:
        candidate, n = stem, 1
        while candidate.casefold() in used or (n > 1 and candidate.casefold() in reserved):
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate.casefold())
        out.append(candidate)
    return out


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file in the same directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(result: Result, out_dir: str | Path, formats: str | Iterable[str],
                  stem: str | None = None, *, max_line_width: int | None = None,
                  max_words_per_line: int | None = None, max_lines: int = 2) -> list[Path]:
    """Write ``out_dir/<stem>.<fmt>`` for each format (a ``expand_formats`` spec or names),
    each atomically, creating ``out_dir``; return the paths. ``stem`` defaults to
    ``safe_stem(result.id)`` (use ``unique_stems`` for several inputs). A result with an
    ``error`` writes nothing and returns []. Every format is rendered before any is written."""
    names = expand_formats(formats if isinstance(formats, str) else ",".join(formats))
    if result.error is not None:
        return []
    texts = {fmt: render(result, fmt, max_line_width=max_line_width,
                         max_words_per_line=max_words_per_line, max_lines=max_lines)
             for fmt in names}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _clean(stem) if stem is not None else safe_stem(result.id)
    paths = [out_dir / f"{base}.{fmt}" for fmt in texts]
    for path, text in zip(paths, texts.values()):
        _write_atomically(path, text)
    if hasattr(os, "O_DIRECTORY"):  # make the renames durable (POSIX)
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return paths
