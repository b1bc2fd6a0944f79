"""Corpora -> lhotse CutSets: CSV/JSONL import with row validation, and corpus splits.

Every utterance becomes one ``MonoCut`` (id = the row id) over one ``Recording`` whose
rate, length and duration come from the audio header, with one supervision holding the
transcript (``cut.supervisions[0].text``) and, when known, the speaker. Rows that cannot
be used (malformed, a field that is not a string, a non-positive duration, missing,
unreadable or sub-frame audio, empty text, a repeated id) are warned about as
``file:line: reason`` and skipped; a manifest with no usable row is ``ManifestError``.

>>> splits = prepare_fsdd("../shared/data/fsdd", "data/fsdd")  # doctest: +SKIP
>>> {name: len(cuts) for name, cuts in splits.items()}  # doctest: +SKIP
{'train': 2250, 'dev': 250, 'test': 500}
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
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

FSDD_TEST_SPEAKER = "theo"  # held-out speaker: the honest test set
FSDD_DEV_INDICES = range(45, 50)  # per digit and speaker, the last 5 takes
FSDD_ID = re.compile(r"^(?P<digit>\d+)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)$")


@dataclass
class ImportResult:
    """A manifest's usable rows as cuts, and what was skipped (``file:line: reason``)."""

    cuts: CutSet
    path: str
    rows: int
    problems: list[str] = field(default_factory=list)

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
    """A row that is reported and skipped (not fatal, unlike ManifestError)."""


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
    return cuts


def _csv_records(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, fields) per data row; a row with the wrong number of fields is a str."""
    # utf-8-sig: spreadsheets often start CSV files with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in (reader.fieldnames or [])]
        _check_header(path, header)
        reader.fieldnames = header
        for record in reader:
            if None in record or None in record.values():
                yield reader.line_num, f"malformed row: expected {len(header)} fields"
            else:
                yield reader.line_num, record


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, fields) per non-blank line; undecodable lines are a str reason."""
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
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


MIN_SECONDS = 0.025  # one analysis frame: shorter audio yields no feature frame at all


def _row_to_cut(row: _Row) -> MonoCut:
    """One cut spanning the whole file; rate and length come from the header, not the row."""
    try:
        info = audio_info(row.audio)
    except AudioError as err:
        raise _RowProblem(f"audio {err.path}: {err.reason}") from None
    if info.frames == 0:
        raise _RowProblem(f"audio {row.audio}: audio has zero samples")
    if info.duration < MIN_SECONDS:
        raise _RowProblem(f"audio {row.audio}: {info.frames} samples ({info.duration * 1000:.1f} ms) "
                          f"is shorter than one {MIN_SECONDS * 1000:.0f} ms frame: nothing to recognise")
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
# corpora


def prepare_fsdd(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """Free Spoken Digit Dataset -> {train, dev, test} written to ``out_dir/{split}.jsonl.gz``.

    test: every recording of the held-out speaker ``theo``; dev: takes 45-49 of each digit
    of the other speakers; train: the rest. Ids are ``digit_speaker_index``; the speaker
    is stored in ``supervision.speaker``.
    """
    manifest = Path(root) / "manifest.csv"
    splits: dict[str, list[MonoCut]] = {"train": [], "dev": [], "test": []}
    for cut in read_manifest(manifest).cuts:
        speaker, index = _fsdd_speaker_index(manifest, cut.id)
        splits[_fsdd_split(speaker, index)].append(_with_speaker(cut, speaker))
    return write_splits(splits, out_dir)


def _fsdd_speaker_index(manifest: Path, uid: str) -> tuple[str, int]:
    match = FSDD_ID.match(uid)
    if match is None:
        raise ManifestError(f"{manifest}: id '{uid}' is not digit_speaker_index")
    return match["speaker"], int(match["index"])


def _fsdd_split(speaker: str, index: int) -> str:
    if speaker == FSDD_TEST_SPEAKER:
        return "test"
    return "dev" if index in FSDD_DEV_INDICES else "train"


def prepare_an4(root: str | Path, out_dir: str | Path, dev_speakers: int = 8,
                seed: int = 0) -> dict[str, CutSet]:
    """CMU AN4 training part -> {train, dev} with ``dev_speakers`` speakers held out.

    The dev speakers are drawn with ``random.Random(seed)`` from the sorted speaker list,
    so the split is the same on every machine (8 of 74 speakers is about 10 %).
    """
    manifest = Path(root) / "manifest_train.csv"
    cuts = read_manifest(manifest).cuts
    speakers = sorted({_speaker_of(manifest, cut) for cut in cuts})
    if not 0 < dev_speakers < len(speakers):
        raise ConfigError(f"dev_speakers: must be in 1..{len(speakers) - 1}, got {dev_speakers}")
    held_out = set(random.Random(seed).sample(speakers, dev_speakers))
    logger.info("AN4: no test split exists locally (the official test speakers are not "
                "in %s); writing train and dev only", root)
    return write_splits(split_by_speaker(cuts, held_out), out_dir)


def prepare_csv(path: str | Path, out_dir: str | Path, dev_fraction: float = 0.0,
                seed: int = 0, audio_root: str | Path | None = None,
                kind: str | None = None) -> dict[str, CutSet]:
    """A CSV or JSONL manifest (``kind`` '.csv'/'.jsonl'; default by suffix) ->
    ``cuts.jsonl.gz``, or train/dev when ``dev_fraction`` > 0.

    The dev set is speaker-disjoint when every row names a speaker (whole speakers are
    held out until at least ``dev_fraction`` of the utterances are); otherwise it is a
    random ``dev_fraction`` of the utterances. Both are deterministic given ``seed``.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ConfigError(f"dev_fraction: must be in [0, 1), got {dev_fraction}")
    cuts = read_manifest(path, audio_root, kind).cuts
    if dev_fraction == 0.0:
        return write_splits({"cuts": list(cuts)}, out_dir)
    if all(cut.supervisions[0].speaker for cut in cuts):
        held_out = _speakers_for_fraction(cuts, dev_fraction, seed)
        return write_splits(split_by_speaker(cuts, held_out), out_dir)
    return write_splits(_random_split(cuts, dev_fraction, seed), out_dir)


def split_by_speaker(cuts: CutSet, dev_speakers: set[str]) -> dict[str, list[MonoCut]]:
    """{train, dev}: cuts whose supervision speaker is in ``dev_speakers`` go to dev."""
    splits: dict[str, list[MonoCut]] = {"train": [], "dev": []}
    for cut in cuts:
        splits["dev" if cut.supervisions[0].speaker in dev_speakers else "train"].append(cut)
    return splits


def _speakers_for_fraction(cuts: CutSet, fraction: float, seed: int) -> set[str]:
    counts: dict[str, int] = {}
    for cut in cuts:
        counts[cut.supervisions[0].speaker] = counts.get(cut.supervisions[0].speaker, 0) + 1
    order = sorted(counts)
    random.Random(seed).shuffle(order)
    chosen, total = set(), 0
    # Keep at least one speaker for training.
    for speaker in order[:-1]:
        if total >= fraction * len(cuts):
            break
        chosen.add(speaker)
        total += counts[speaker]
    return chosen


def _random_split(cuts: CutSet, fraction: float, seed: int) -> dict[str, list[MonoCut]]:
    ids = sorted(cut.id for cut in cuts)
    random.Random(seed).shuffle(ids)
    dev = set(ids[: max(1, round(fraction * len(ids)))])
    return {"train": [c for c in cuts if c.id not in dev], "dev": [c for c in cuts if c.id in dev]}


def _speaker_of(manifest: Path, cut: MonoCut) -> str:
    speaker = cut.supervisions[0].speaker
    if not speaker:
        raise ManifestError(f"{manifest}: row '{cut.id}' has no speaker")
    return speaker


def _with_speaker(cut: MonoCut, speaker: str) -> MonoCut:
    return fastcopy(cut, supervisions=[fastcopy(s, speaker=speaker) for s in cut.supervisions])


# ---------------------------------------------------------------------------
# files


def write_splits(splits: dict[str, list[MonoCut]], out_dir: str | Path) -> dict[str, CutSet]:
    """Write each split to ``out_dir/{name}.jsonl.gz``; returns them as CutSets."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, cuts in splits.items():
        cutset = CutSet.from_cuts(cuts)
        if not cuts:
            logger.warning("split '%s' is empty", name)
        cutset.to_file(out_dir / f"{name}.jsonl.gz")
        hours = sum(c.duration for c in cuts) / 3600
        logger.info("%s: %d utterances, %.2f h", name, len(cuts), hours)
        result[name] = cutset
    return result


def load_cuts(path: str | Path, need_text: bool = True) -> CutSet:
    """Read a CutSet manifest (``.jsonl``/``.jsonl.gz``, as written by ``prepare_*``).

    A ``.csv`` file is imported with :func:`import_csv` instead. Raises ``ManifestError``
    when the file is missing, unreadable, empty, or (``need_text``) a cut has no transcript.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        return import_csv(path)
    try:
        cuts = CutSet.from_file(path)
    except Exception as err:  # lhotse raises many types for a corrupt file
        raise ManifestError(f"{path}: not a readable CutSet manifest "
                            f"({type(err).__name__}: {err})") from None
    _check_cuts(path, cuts, need_text)
    return cuts


def _check_cuts(path: Path, cuts: CutSet, need_text: bool = True) -> None:
    if cuts is None or len(cuts) == 0:  # lhotse reads a 0-byte file as None
        raise ManifestError(f"{path}: manifest holds no cuts")
    for cut in cuts:
        if need_text and (not cut.supervisions or not (cut.supervisions[0].text or "").strip()):
            raise ManifestError(f"{path}: cut '{cut.id}' has no transcript")
        if cut.recording is None:
            raise ManifestError(f"{path}: cut '{cut.id}' has no recording")


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
