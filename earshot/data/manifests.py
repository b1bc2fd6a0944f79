"""Manifests -> lhotse CutSets: CSV/JSONL import with row validation, and reading CutSets.

Every utterance becomes one ``MonoCut`` (id = the row id) over one ``Recording`` whose
rate, length and duration come from the audio header, with one supervision holding the
transcript (``cut.supervisions[0].text``) and, when known, the speaker. Rows that cannot
be used (malformed, a field that is not a string, a non-positive duration, missing,
unreadable or sub-frame audio, empty text, a repeated id) are warned about as
``file:line: reason`` and skipped; a manifest with no usable row is ``ManifestError``.

>>> cuts = read_manifest("my_corpus.csv").cuts  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.utils import fastcopy

from earshot.audio import audio_info
from earshot.errors import AudioError, ConfigError, ManifestError

logger = logging.getLogger(__name__)

# Accepted column names, first match wins: (field, aliases).
COLUMNS = {
    "id": ("id",),
    "audio": ("path", "audio"),
    "text": ("text", "transcript"),
    "duration": ("duration", "duration_s"),
    "speaker": ("speaker",),
}
REQUIRED = ("id", "audio", "text")



@dataclass
class ImportResult:
    """A manifest's usable rows as cuts, and what was skipped (``file:line: reason``)."""

    cuts: CutSet
    path: str
    rows: int
    problems: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)  # skipped rows per kind of problem

    @property
    def skipped(self) -> int:
        return len(self.problems)


@dataclass(frozen=True)
class _Row:
    line: int
    id: str
    audio: Path
    text: str
    speaker: str | None


class _RowProblem(Exception):
    """A row that is reported and skipped (not fatal, unlike ManifestError). ``kind``: the
    reason without the row's particulars, for counts ("malformed row", "audio unreadable")."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or next((k for prefix, k in _KINDS if message.startswith(prefix)),
                                 "malformed row")


_KINDS = (("duplicate id", "duplicate id"), ("empty transcript", "empty transcript"),
          ("transcript holds the control", "control character in transcript"))


# ---------------------------------------------------------------------------
# import


def import_csv(path: str | Path, audio_root: str | Path | None = None) -> CutSet:
    """CutSet from a CSV with a header (id, path|audio, text|transcript, [duration], [speaker]).

    Relative audio paths are resolved against ``audio_root``, else the CSV's folder.
    """
    return read_manifest(path, audio_root, kind=".csv").cuts


def import_jsonl(path: str | Path, audio_root: str | Path | None = None) -> CutSet:
    """CutSet from JSON lines with the same fields as :func:`import_csv`."""
    return read_manifest(path, audio_root, kind=".jsonl").cuts


def read_manifest(path: str | Path, audio_root: str | Path | None = None,
                  kind: str | None = None) -> ImportResult:
    """Import a CSV or JSONL manifest (``kind`` '.csv'/'.jsonl', default: the suffix).

    Bad rows are logged at WARNING as ``file:line: reason`` and skipped, followed by a
    "skipped N of M rows" line; all of them are in ``ImportResult.problems``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if kind and suffix in _RECORD_READERS and suffix != kind:
        raise ManifestError(f"{path}: asked to read it as {kind[1:].upper()}, but it is named "
                            f"{suffix}: use `prepare {suffix[1:]}` (or rename the file)")
    kind = kind or suffix
    if kind not in _RECORD_READERS:
        raise ManifestError(f"{path}: unknown manifest type '{kind}' (expected .csv or .jsonl)")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = Path(audio_root) if audio_root is not None else path.parent
    result = ImportResult(cuts=CutSet(), path=str(path), rows=0)
    try:
        cuts = _import_records(_RECORD_READERS[kind](path), path, base, result)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{path}: unreadable text after {result.rows} rows ({err})") from None
    result.cuts = CutSet.from_cuts(cuts)
    _log_summary(result)
    if not cuts:
        raise ManifestError(f"{path}: no usable rows (skipped {result.skipped} of {result.rows})")
    return result


def _import_records(records: Iterator[tuple[int, dict | str]], path: Path, base: Path,
                    result: ImportResult) -> list[MonoCut]:
    """Validate each (line, fields) record into a cut; problems go into ``result``."""
    cuts, first_line = [], {}
    for line, fields in records:
        result.rows += 1
        try:
            row = _parse_row(fields, line, base)
            if row.id in first_line:
                raise _RowProblem(f"duplicate id '{row.id}' (first at {path}:{first_line[row.id]}); "
                                  f"this row is skipped")
            first_line[row.id] = line
            cuts.append(_row_to_cut(row))
        except _RowProblem as problem:
            message = f"{path}:{line}: {problem}"
            logger.warning(message)
            result.problems.append(message)
            result.reasons[problem.kind] += 1
    return cuts


MAX_FIELD_CHARS = 65536  # a longer field (a transcript of hours, a stray quote) is refused


def _csv_records(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, fields) per data row; a row that cannot be used as it stands (wrong number of
    fields, bytes that are not UTF-8, an overlong field, a quoting error) is a str reason."""
    # utf-8-sig: spreadsheets often start CSV files with a byte-order mark. Bytes that are
    # not UTF-8 become lone surrogates, found per row below instead of ending the file.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 16 * MAX_FIELD_CHARS))
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in (reader.fieldnames or [])]
            _check_header(path, header)
            reader.fieldnames = header
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    yield reader.line_num, f"malformed row: {err}"
                    continue
                yield reader.line_num, _csv_problem(record, len(header)) or record
    finally:
        csv.field_size_limit(limit)


def _csv_problem(record: dict, fields: int) -> str | None:
    if None in record or None in record.values():
        return f"malformed row: expected {fields} fields"
    for name, value in record.items():
        if _NOT_UTF8.search(value):
            return f"malformed row: field '{name}' holds bytes that are not UTF-8 text"
        if len(value) > MAX_FIELD_CHARS:
            return f"malformed row: field '{name}' is {len(value)} characters long (at most {MAX_FIELD_CHARS})"
    return None


_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, fields) per non-blank line; undecodable lines are a str reason."""
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            try:  # (utf-8-sig: a byte-order mark on the first line, as CSV files may have)
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield line, f"malformed row: byte {err.start + 1} is not UTF-8 text"
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                yield line, f"malformed JSON ({err.msg})"
                continue
            yield line, record if isinstance(record, dict) else "malformed row: not a JSON object"


_RECORD_READERS = {".csv": _csv_records, ".jsonl": _jsonl_records}


def _check_header(path: Path, header: list[str]) -> None:
    missing = [" or ".join(COLUMNS[name]) for name in REQUIRED
               if not any(alias in header for alias in COLUMNS[name])]
    if missing:
        raise ManifestError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                            f"(has: {', '.join(header) or 'nothing'})")


def _field(record: dict, name: str) -> str | None:
    """The value of the first alias of ``name`` present in ``record``, stripped."""
    for alias in COLUMNS[name]:
        value = record.get(alias)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _RowProblem(f"malformed row: '{alias}' must be a string or a number, "
                              f"got {type(value).__name__} {json.dumps(value)[:40]}")
        return str(value).strip()
    return None


def _parse_row(fields: dict | str, line: int, base: Path) -> _Row:
    if isinstance(fields, str):
        raise _RowProblem(fields)
    uid, audio, text = (_field(fields, name) for name in REQUIRED)
    if not uid:
        raise _RowProblem("malformed row: empty or missing id")
    if not audio:
        raise _RowProblem("malformed row: empty or missing audio path")
    if not text:
        raise _RowProblem("empty transcript")
    odd = _CONTROL.search(text)
    if odd:
        raise _RowProblem(f"transcript holds the control character U+{ord(odd.group()):04X} at "
                          f"position {odd.start() + 1}; remove it")
    duration = _field(fields, "duration")
    if duration:
        try:
            seconds = float(duration)
        except ValueError:
            raise _RowProblem(f"malformed row: duration '{duration}' is not a number") from None
        if not (math.isfinite(seconds) and seconds > 0):
            raise _RowProblem(f"malformed row: duration '{duration}' must be a positive number of seconds")
    if "\x00" in audio:
        raise _RowProblem(f"malformed row: audio path {audio!r} holds a NUL character")
    audio_path = Path(audio).expanduser()
    if not audio_path.is_absolute():
        audio_path = base / audio_path
    return _Row(line, uid, audio_path.resolve(), text, _field(fields, "speaker") or None)


# Characters no transcript means to hold: C0/C1 controls (tabs and line breaks included:
# a transcript is one line), and the bidirectional overrides that reorder displayed text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

MIN_SECONDS = 0.025  # one analysis frame: shorter audio yields no feature frame at all


def _row_to_cut(row: _Row) -> MonoCut:
    """One cut spanning the whole file; rate and length come from the header, not the row."""
    try:
        info = audio_info(row.audio)
    except AudioError as err:
        raise _RowProblem(f"audio {err.path}: {err.reason}", "audio unreadable") from None
    if info.frames == 0:
        raise _RowProblem(f"audio {row.audio}: audio has zero samples", "audio has zero samples")
    if info.duration < MIN_SECONDS:
        raise _RowProblem(f"audio {row.audio}: {info.frames} samples ({info.duration * 1000:.1f} ms) "
                          f"is shorter than one {MIN_SECONDS * 1000:.0f} ms frame: nothing to recognise",
                          "audio shorter than one frame")
    recording = Recording(
        id=row.id,
        sources=[AudioSource(type="file", channels=list(range(info.channels)),
                             source=str(row.audio))],
        sampling_rate=info.sample_rate, num_samples=info.frames, duration=info.duration)
    supervision = SupervisionSegment(id=row.id, recording_id=row.id, start=0.0,
                                     duration=info.duration, channel=0, text=row.text,
                                     speaker=row.speaker)
    return MonoCut(id=row.id, start=0.0, duration=info.duration, channel=0,
                   recording=recording, supervisions=[supervision])


def _log_summary(result: ImportResult) -> None:
    if result.skipped:
        logger.warning("%s: skipped %d of %d rows", result.path, result.skipped, result.rows)
    else:
        logger.info("%s: imported all %d rows", result.path, result.rows)


# ---------------------------------------------------------------------------
# reading manifests


def load_cuts(path: str | Path, need_text: bool = True, shuffle_shards: bool = False,
              seed: int = 0, strict: bool = False) -> CutSet:
    """Open a CutSet manifest (``.jsonl``/``.jsonl.gz``, as written by ``prepare_*``), or a
    folder of shards (``earshot shard``; ``shuffle_shards``, ``seed``, ``strict``: see
    ``earshot.data.shards``).

    The manifest is read lazily: each pass over the returned CutSet streams the file, so
    a corpus of millions of cuts never sits in memory. One pass here checks every cut.
    A ``.csv`` file is imported with :func:`import_csv` instead. Raises ``ManifestError``
    when the file is missing, unreadable, empty, or (``need_text``) a cut has no transcript.
    """
    from earshot.data.shards import is_shard_dir, open_shards

    path = Path(path)
    if path.is_dir():
        if not is_shard_dir(path):
            raise ManifestError(f"{path}: a folder without shards (cuts.NNNNNN.jsonl.gz); give "
                                f"a manifest file or a folder written by earshot shard")
        cuts = open_shards(path, shuffle_shards, seed, strict)
        _check_cuts(path, cuts, need_text)
        return cuts
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        return import_csv(path)
    try:
        lazy = path.name.lower().endswith((".jsonl", ".jsonl.gz"))
        cuts = CutSet.from_jsonl_lazy(path) if lazy else CutSet.from_file(path)
        _check_cuts(path, cuts, need_text)
    except ManifestError:
        raise
    except Exception as err:  # lhotse raises many types for a corrupt file
        raise ManifestError(f"{path}: not a readable CutSet manifest "
                            f"({type(err).__name__}: {err})") from None
    return cuts


def _check_cuts(path: Path, cuts: CutSet, need_text: bool = True) -> None:
    empty = True
    for cut in cuts if cuts is not None else ():  # lhotse reads a 0-byte file as None
        empty = False
        if need_text and (not cut.supervisions or not (cut.supervisions[0].text or "").strip()):
            raise ManifestError(f"{path}: cut '{cut.id}' has no transcript")
        if cut.recording is None:
            raise ManifestError(f"{path}: cut '{cut.id}' has no recording")
    if empty:
        raise ManifestError(f"{path}: manifest holds no cuts")


@dataclass(frozen=True)
class ManifestStats:
    """What one pass over a CutSet counts."""

    cuts: int
    hours: float
    longest: float  # seconds


def manifest_stats(cuts: CutSet) -> ManifestStats:
    """Cuts, hours and the longest cut of ``cuts``, in one pass (lazy manifests included)."""
    count, seconds, longest = 0, 0.0, 0.0
    for cut in cuts:
        count, seconds, longest = count + 1, seconds + cut.duration, max(longest, cut.duration)
    return ManifestStats(count, seconds / 3600, longest)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph")


def audio_folder_cuts(folder: str | Path) -> CutSet:
    """Every audio file under ``folder`` (recursively; by suffix) as an untranscribed cut
    whose id is its path relative to the folder without the suffix. A file whose header
    does not read, or that is shorter than one analysis frame, is warned about (path and
    reason) and left out; a folder with no usable file is ``ManifestError``."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    cuts, bad = [], 0
    for path in files:
        try:
            info = audio_info(path)
            if info.duration < MIN_SECONDS:
                raise AudioError(path, f"{info.frames} samples is shorter than one "
                                       f"{MIN_SECONDS * 1000:.0f} ms frame")
        except AudioError as err:
            logger.warning("%s: left out: %s", err.path, err.reason)
            bad += 1
            continue
        uid = str(path.relative_to(root).with_suffix(""))
        recording = Recording(id=uid, sources=[AudioSource(type="file", channels=list(range(info.channels)),
                                                           source=str(path.resolve()))],
                              sampling_rate=info.sample_rate, num_samples=info.frames,
                              duration=info.duration)
        cuts.append(MonoCut(id=uid, start=0.0, duration=info.duration, channel=0, recording=recording))
    if not cuts:
        raise ManifestError(f"{root}: no usable audio file ({', '.join(AUDIO_SUFFIXES)}) under it"
                            + (f"; {bad} left out" if bad else ""))
    logger.info("%s: %d audio files (%.2f h)%s", root, len(cuts), sum(c.duration for c in cuts) / 3600,
                f", {bad} left out" if bad else "")
    return CutSet.from_cuts(cuts)


def load_audio_sources(paths: tuple[str, ...] | list[str], key: str) -> CutSet:
    """Untranscribed audio from manifests and/or folders of audio files, as one CutSet
    (for self-supervised pretraining; transcripts, where present, are ignored). An id
    seen before gets a ``#N`` suffix, so corpora with overlapping ids can be pooled."""
    if not paths:
        raise ConfigError(f"config key '{key}': no manifest or audio folder given")
    seen: set[str] = set()
    pooled = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            cuts = audio_folder_cuts(p)
        elif p.is_file():
            cuts = load_cuts(p, need_text=False)
        else:
            raise ConfigError(f"config key '{key}': '{path}' is neither a manifest nor a folder")
        for cut in cuts:
            uid, n = cut.id, 1
            while uid in seen:
                n += 1
                uid = f"{cut.id}#{n}"
            seen.add(uid)
            pooled.append(cut if uid == cut.id else fastcopy(cut, id=uid))
    return CutSet.from_cuts(pooled)
