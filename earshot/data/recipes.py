"""Public corpora through lhotse's recipes, from local folders (nothing is downloaded).

Each ``prepare_NAME(root, out_dir, ...)`` checks that ``root`` has the corpus's layout
(and names the files it expected and did not find), runs lhotse's recipe on it, turns its
recordings and supervisions into one cut per transcribed segment, and writes the splits
with ``write_splits`` (``out_dir/{split}.jsonl.gz`` plus the preparation summary). What
lhotse drops (a transcript whose audio file is missing: named in the log) and what is
dropped here (a segment with no words or no duration) is counted by reason.

Transcripts are kept as the corpus spells them; a recipe's ``data.text_norm`` decides
case, punctuation and numbers, the same way in training and scoring.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from lhotse import CutSet, RecordingSet, SupervisionSet

from earshot.data.corpora import write_splits
from earshot.errors import ConfigError

logger = logging.getLogger(__name__)

LIBRISPEECH_PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean",
                     "dev-other", "test-clean", "test-other")
MINI_LIBRISPEECH_PARTS = ("train-clean-5", "dev-clean-2")
TEDLIUM_PARTS = ("train", "dev", "test")
COMMONVOICE_SPLITS = ("train", "dev", "test")
MUSAN_PARTS = ("music", "speech", "noise")
MAX_LISTED = 20  # missing files named one by one; the rest are counted


def prepare_librispeech(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """LibriSpeech (``root`` holds LibriSpeech/ or its part folders: train-clean-100/,
    dev-clean/, ...) -> ``train`` (every train-* part found, together) and one manifest
    per other part under its own name (``dev-clean``, ``test-other``, ...)."""
    from lhotse.recipes import prepare_librispeech as recipe

    root = _descend(Path(root), "LibriSpeech")
    parts = _librispeech_parts(root, LIBRISPEECH_PARTS + MINI_LIBRISPEECH_PARTS, "LibriSpeech")
    manifests, skipped = _run_librispeech(recipe, root, parts)
    splits: dict[str, list] = {}
    for part in parts:
        if part in manifests:
            name = "train" if part.startswith("train-") else part
            splits.setdefault(name, []).extend(_cuts(manifests[part], skipped))
    return write_splits(splits, out_dir, skipped)


def prepare_mini_librispeech(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """Mini LibriSpeech (train-clean-5/ and dev-clean-2/, as openslr 31 unpacks them under
    LibriSpeech/) -> ``train`` and ``dev``."""
    from lhotse.recipes import prepare_librispeech as recipe

    root = _descend(Path(root), "LibriSpeech")
    parts = _librispeech_parts(root, MINI_LIBRISPEECH_PARTS, "Mini LibriSpeech")
    manifests, skipped = _run_librispeech(recipe, root, parts)
    names = {"train-clean-5": "train", "dev-clean-2": "dev"}
    return write_splits({names[p]: _cuts(manifests[p], skipped) for p in parts if p in manifests},
                        out_dir, skipped)


def prepare_commonvoice(root: str | Path, out_dir: str | Path,
                        language: str | None = None) -> dict[str, CutSet]:
    """Mozilla Common Voice (``root``: the release folder holding one folder per language,
    or one language's folder: {train,dev,test}.tsv and clips/) -> ``train``, ``dev``,
    ``test``. ``language`` picks one where the release holds several."""
    from lhotse.recipes import prepare_commonvoice as recipe

    root = Path(root)
    if (root / "clips").is_dir() or any((root / f"{s}.tsv").exists() for s in COMMONVOICE_SPLITS):
        root, found = root.parent, [root.name]  # pointed at one language's folder
    else:
        found = sorted(p.name for p in root.iterdir() if (p / "clips").is_dir()) \
            if root.is_dir() else []
    if language is not None:
        found = [lang for lang in found if lang == language]
    if len(found) != 1:
        _missing(root, "Common Voice", ["LANG/clips/", "LANG/train.tsv", "LANG/dev.tsv",
                                        "LANG/test.tsv"],
                 f"languages found: {', '.join(found) or 'none'}" +
                 ("; choose one with --language" if len(found) > 1 else ""))
    lang = found[0]
    splits_present = [s for s in COMMONVOICE_SPLITS if (root / lang / f"{s}.tsv").is_file()]
    if not splits_present or not (root / lang / "clips").is_dir():
        _missing(root / lang, "Common Voice", ["clips/"] + [f"{s}.tsv" for s in COMMONVOICE_SPLITS])
    skipped: Counter = Counter()
    out_dir = Path(out_dir)
    # lhotse's recipe insists on writing its own manifests: they go to a subfolder
    manifests = _run(recipe, root, out_dir / "lhotse", languages=[lang], splits=splits_present)
    for split in splits_present:
        _account(_commonvoice_rows(root / lang, split),
                 set(manifests[lang][split]["recordings"].ids), skipped)
    return write_splits({s: _cuts(manifests[lang][s], skipped) for s in splits_present},
                        out_dir, skipped)


def prepare_tedlium(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """TED-LIUM release 3 (``root``: TEDLIUM_release-3/ with legacy/{train,dev,test}/
    {sph,stm}/) -> ``train``, ``dev``, ``test``: one cut per scored segment of each talk."""
    from lhotse.recipes import prepare_tedlium as recipe

    root = _descend(Path(root), "TEDLIUM_release-3")
    expected = [f"legacy/{p}/{d}/" for p in TEDLIUM_PARTS for d in ("sph", "stm")]
    missing = [e for e in expected if not (root / e).is_dir()]
    if missing:
        _missing(root, "TED-LIUM release 3", missing)
    skipped: Counter = Counter()
    manifests = _run(recipe, root, dataset_parts=TEDLIUM_PARTS)
    return write_splits({p: _cuts(manifests[p], skipped) for p in TEDLIUM_PARTS}, out_dir, skipped)


def prepare_timit(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """TIMIT (``root`` holds data/TRAIN/ and data/TEST/, DR*/SPEAKER/*.WAV with .TXT, .WRD
    and .PHN beside each) -> ``train``, ``dev``, ``test`` in lhotse's speaker split (the
    standard 50-speaker dev and 24-speaker core test). The transcript is the sentence of
    the .TXT file; word and 48-phone alignments come along in the supervisions."""
    from lhotse.recipes import prepare_timit as recipe

    root = Path(root)
    if not (root / "data").is_dir() and (root / "TIMIT" / "data").is_dir():
        root = root / "TIMIT"
    missing = [d for d in ("data/TRAIN/", "data/TEST/") if not (root / d).is_dir()]
    if missing or not any((root / "data").glob("*/*/*/*.WAV")):
        _missing(root, "TIMIT", missing or ["data/TRAIN/DR*/SPEAKER/*.WAV"])
    skipped: Counter = Counter()
    manifests = _run(recipe, root, num_phones=48)
    names = {"TRAIN": "train", "DEV": "dev", "TEST": "test"}
    # a sentence whose .TXT, .WRD or .PHN file is missing is dropped by the recipe
    train = {f"{w.parent.name}-{w.stem}": w for w in (root / "data" / "TRAIN").glob("*/*/*.WAV")}
    _account(train, set(manifests["TRAIN"]["recordings"].ids) if "TRAIN" in manifests else set(),
             skipped, "transcript file (.TXT/.WRD/.PHN) missing")
    return write_splits({name: _cuts(manifests[part], skipped) for part, name in names.items()
                         if part in manifests}, out_dir, skipped)


def prepare_musan(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """MUSAN (``root``: musan/ with music/, speech/, noise/) -> untranscribed ``noise``,
    ``music`` and ``speech`` manifests: sources for additive-noise augmentation."""
    from lhotse.recipes import prepare_musan as recipe

    root = _descend(Path(root), "musan")
    parts = [p for p in MUSAN_PARTS if (root / p).is_dir()]
    if not parts:
        _missing(root, "MUSAN", [f"{p}/" for p in MUSAN_PARTS])
    skipped: Counter = Counter()
    manifests = _run(recipe, root, parts=parts, use_vocals=True)
    splits = {}
    for part in parts:
        recordings = manifests[part]["recordings"]
        if len(recordings):
            splits[part] = list(CutSet.from_manifests(recordings=recordings))
        else:
            skipped[f"{part}/: no audio files"] += 1
    return write_splits(splits, out_dir, skipped)


# ---------------------------------------------------------------------------


def _run(recipe, *args, **kwargs):
    """A lhotse recipe with soundfile reading every header (NIST SPHERE included: lhotse
    would otherwise want the sph2pipe program for .sph files), as earshot's loader does."""
    from lhotse.audio.backend import audio_backend

    with audio_backend("LibsndfileBackend"):
        return recipe(*args, **kwargs)


def _cuts(manifest: dict, skipped: Counter) -> list:
    """One cut per supervision with words, over its own span of the recording."""
    recordings: RecordingSet = manifest["recordings"]
    supervisions: SupervisionSet = manifest["supervisions"]
    kept = []
    for sup in supervisions:
        if not (sup.text or "").strip():
            skipped["segment without words"] += 1
        elif sup.duration <= 0:
            skipped["segment of no duration"] += 1
        else:
            kept.append(sup)
    if not kept:
        return []
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=SupervisionSet.from_segments(kept))
    return list(cuts.trim_to_supervisions(keep_overlapping=False))


def _run_librispeech(recipe, root: Path, parts: list[str]) -> tuple[dict, Counter]:
    manifests = _run(recipe, root, dataset_parts=parts)
    skipped: Counter = Counter()
    for part in parts:
        produced = set(manifests[part]["recordings"].ids) if part in manifests else set()
        _account(_librispeech_rows(root, part), produced, skipped)
    return manifests, skipped


def _librispeech_parts(root: Path, known: tuple[str, ...], corpus: str) -> list[str]:
    parts = [p for p in known if any((root / p).glob("*/*/*.trans.txt"))]
    if not parts:
        _missing(root, corpus, [f"{p}/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt" for p in known],
                 "with the .flac files beside each .trans.txt")
    return parts


def _descend(root: Path, name: str) -> Path:
    """``root/name`` when the user pointed at the folder the corpus unpacks into."""
    return root / name if (root / name).is_dir() else root


def _missing(root: Path, corpus: str, expected: list[str], extra: str = "") -> None:
    what = "does not exist" if not root.is_dir() else "is not a " + corpus + " folder"
    raise ConfigError(f"{root} {what}: expected {', '.join(expected)}" +
                      (f" ({extra})" if extra else "") + "; found none of them")


def _account(expected: dict[str, Path], produced: set[str], skipped: Counter,
             reason: str = "audio file missing") -> None:
    """Log and count the rows lhotse's recipe dropped (``expected``: id -> file)."""
    missing = [uid for uid in expected if uid not in produced]
    for uid in missing[:MAX_LISTED]:
        logger.warning("%s: %s; row '%s' skipped", expected[uid], reason, uid)
    if len(missing) > MAX_LISTED:
        logger.warning("... and %d more rows skipped: %s", len(missing) - MAX_LISTED, reason)
    if missing:
        skipped[reason] += len(missing)


def _librispeech_rows(root: Path, part: str) -> dict[str, Path]:
    rows = {}
    for trans in (root / part).glob("*/*/*.trans.txt"):
        for line in trans.read_text(errors="replace").splitlines():
            if line.strip():
                uid = line.split(maxsplit=1)[0]
                rows[uid] = trans.parent / f"{uid}.flac"
    return rows


def _commonvoice_rows(lang_dir: Path, split: str) -> dict[str, Path]:
    import csv

    with open(lang_dir / f"{split}.tsv", newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {Path(row["path"]).stem: lang_dir / "clips" / row["path"]
                for row in reader if row.get("path")}
