"""Corpus preparers: a corpus folder or a table of utterances -> split manifests.

Each preparer is one entry of ``earshot.choices.PREPARERS`` (``earshot prepare NAME``):
``prepare_NAME(source, out_dir, **options) -> {split: CutSet}``, writing each split to
``out_dir/{split}.jsonl.gz``. The options a preparer takes are its keyword parameters;
the CLI passes each only the options it declares. Nothing is downloaded.

>>> splits = prepare_fsdd("/corpora/fsdd", "data/fsdd")  # doctest: +SKIP
>>> {name: len(cuts) for name, cuts in splits.items()}  # doctest: +SKIP
{'train': 2250, 'dev': 250, 'test': 500}
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
import re
from collections import Counter
from pathlib import Path

from lhotse import CutSet, MonoCut
from lhotse.utils import fastcopy

from earshot.data.manifests import read_manifest
from earshot.errors import ConfigError, ManifestError
from earshot.integrity import atomic_write_text

logger = logging.getLogger(__name__)

FSDD_TEST_SPEAKER = "theo"  # held-out speaker: the honest test set
FSDD_DEV_INDICES = range(45, 50)  # per digit and speaker, the last 5 takes
FSDD_ID = re.compile(r"^(?P<digit>\d+)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)$")


def prepare_fsdd(root: str | Path, out_dir: str | Path) -> dict[str, CutSet]:
    """Free Spoken Digit Dataset -> {train, dev, test} written to ``out_dir/{split}.jsonl.gz``.

    test: every recording of the held-out speaker ``theo``; dev: takes 45-49 of each digit
    of the other speakers; train: the rest. Ids are ``digit_speaker_index``; the speaker
    is stored in ``supervision.speaker``.
    """
    manifest = _layout_file(Path(root), "manifest.csv", "FSDD")
    splits: dict[str, list[MonoCut]] = {"train": [], "dev": [], "test": []}
    result = read_manifest(manifest)
    for cut in result.cuts:
        speaker, index = _fsdd_speaker_index(manifest, cut.id)
        splits[_fsdd_split(speaker, index)].append(_with_speaker(cut, speaker))
    return write_splits(splits, out_dir, result.reasons)


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
    manifest = _layout_file(Path(root), "manifest_train.csv", "AN4")
    result = read_manifest(manifest)
    cuts = result.cuts
    speakers = sorted({_speaker_of(manifest, cut) for cut in cuts})
    if not 0 < dev_speakers < len(speakers):
        raise ConfigError(f"dev_speakers: must be in 1..{len(speakers) - 1}, got {dev_speakers}")
    held_out = set(random.Random(seed).sample(speakers, dev_speakers))
    logger.info("AN4: no test split exists locally (the official test speakers are not "
                "in %s); writing train and dev only", root)
    return write_splits(split_by_speaker(cuts, held_out), out_dir, result.reasons)


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
    result = read_manifest(path, audio_root, kind)
    cuts = result.cuts
    if dev_fraction == 0.0:
        return write_splits({"cuts": list(cuts)}, out_dir, result.reasons)
    if all(cut.supervisions[0].speaker for cut in cuts):
        splits = split_by_speaker(cuts, _speakers_for_fraction(cuts, dev_fraction, seed))
    else:
        splits = _random_split(cuts, dev_fraction, seed)
    empty = [name for name, part in splits.items() if not part]
    if empty:
        raise ConfigError(f"dev_fraction (--dev-fraction) {dev_fraction:g} leaves the {empty[0]} "
                          f"split empty ({len(cuts)} usable utterances, "
                          f"{len({c.supervisions[0].speaker for c in cuts})} speaker(s)); "
                          f"nothing written")
    return write_splits(splits, out_dir, result.reasons)


def prepare_jsonl(path: str | Path, out_dir: str | Path, dev_fraction: float = 0.0,
                  seed: int = 0, audio_root: str | Path | None = None) -> dict[str, CutSet]:
    """A JSONL manifest (one object per line) -> splits, as ``prepare_csv``."""
    return prepare_csv(path, out_dir, dev_fraction, seed, audio_root, kind=".jsonl")


def prepare_synthetic(source: str | Path | None, out_dir: str | Path, utterances: int = 2000,
                      seed: int = 0) -> dict[str, CutSet]:
    """The demo's corpus: ``utterances`` training sentences spoken by espeak-ng (2,000 are
    about 1.2 h), plus a dev set in the training voices and a test set in held-out voices;
    ``source`` must be None."""
    from earshot.data.synth import synthesize_corpus

    if source is not None:
        raise ConfigError("prepare synthetic: takes no source (it synthesises its corpus)")
    return synthesize_corpus(out_dir, num_train=utterances, seed=seed)

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


def write_splits(splits: dict[str, list[MonoCut]], out_dir: str | Path,
                 skipped: Counter | None = None) -> dict[str, CutSet]:
    """Write each split to ``out_dir/{name}.jsonl.gz`` and the preparation summary (per
    split: utterances, hours, speakers, durations, characters; rows skipped by reason) to
    ``out_dir/summary.json``; returns the splits as CutSets."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, cuts in splits.items():
        cutset = CutSet.from_cuts(cuts)
        if not cuts:
            logger.warning("split '%s' is empty", name)
        _write_cuts(cutset, out_dir / f"{name}.jsonl.gz")
        hours = sum(c.duration for c in cuts) / 3600
        logger.info("%s: %d utterances, %.2f h", name, len(cuts), hours)
        result[name] = cutset
    summary = {"splits": {name: split_summary(cuts) for name, cuts in result.items()},
               "skipped": dict(sorted((skipped or {}).items(), key=lambda kv: -kv[1]))}
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return result


def _write_cuts(cuts: CutSet, path: Path) -> None:
    """``cuts.to_file(path)`` through a temporary name: a crash leaves no half manifest."""
    tmp = path.with_name(f".{path.name.split('.')[0]}.{os.getpid()}.tmp{''.join(path.suffixes)}")
    try:
        cuts.to_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def shuffle_manifest(path: str | Path, seed: int = 0) -> None:
    """Rewrite a manifest with its cuts in a seeded random order: a lazily read training
    manifest is shuffled only within a buffer, so a pre-shuffled file keeps its epochs
    well mixed (and the first cuts a random sample)."""
    path = Path(path)
    cuts = list(CutSet.from_file(path))
    random.Random(seed).shuffle(cuts)
    _write_cuts(CutSet.from_cuts(cuts), path)


SUMMARY_FILE = "summary.json"
DURATION_BINS = (1, 2, 5, 10, 20, 30)  # seconds: the histogram's upper edges (and > 30)


def split_summary(cuts) -> dict:
    """Utterances, hours, speakers, duration histogram and characters of a split."""
    durations, speakers, chars = [], set(), Counter()
    for cut in cuts:
        durations.append(cut.duration)
        for sup in cut.supervisions:
            if sup.speaker:
                speakers.add(sup.speaker)
            chars.update(sup.text or "")
    bins = [0] * (len(DURATION_BINS) + 1)
    for d in durations:
        bins[bisect.bisect_left(DURATION_BINS, d)] += 1
    return {"utterances": len(durations), "hours": round(sum(durations) / 3600, 4),
            "speakers": len(speakers), "shortest_s": round(min(durations, default=0.0), 3),
            "longest_s": round(max(durations, default=0.0), 3), "duration_histogram": bins,
            "characters": "".join(sorted(chars))}


def format_summary(summary: dict) -> str:
    """The summary of ``write_splits`` as one screen of text."""
    lines = [f"{'split':<16}{'utts':>9}{'hours':>9}{'speakers':>9}{'shortest':>10}{'longest':>9}"]
    chars: set[str] = set()
    for name, s in summary["splits"].items():
        lines.append(f"{name:<16}{s['utterances']:>9,}{s['hours']:>9.2f}{s['speakers']:>9,}"
                     f"{s['shortest_s']:>9.2f}s{s['longest_s']:>8.1f}s")
        chars.update(s["characters"])
    edges = ["0"] + [str(e) for e in DURATION_BINS]
    labels = [f"{a}-{b} s" for a, b in zip(edges, edges[1:])] + [f"> {DURATION_BINS[-1]} s"]
    totals = [sum(s["duration_histogram"][i] for s in summary["splits"].values())
              for i in range(len(labels))]
    peak = max(totals, default=0) or 1
    lines.append("durations (all splits):")
    for label, count in zip(labels, totals):
        lines.append(f"  {label:>8} {count:>9,} {'#' * round(40 * count / peak)}")
    shown = "".join(c if c.isprintable() and c != " " else "" for c in sorted(chars))
    lines.append(f"characters ({len(chars)}, space included): {shown}")
    skipped = summary.get("skipped") or {}
    if skipped:
        lines.append(f"skipped {sum(skipped.values()):,} rows: " +
                     "; ".join(f"{reason} {count:,}" for reason, count in skipped.items()))
    else:
        lines.append("skipped: none")
    return "\n".join(lines)


def _layout_file(root: Path, name: str, corpus: str) -> Path:
    """``root/name``, or a ConfigError saying the folder lacks the file the layout needs."""
    if not (root / name).is_file():
        what = "does not exist" if not root.exists() else f"is not a prepared {corpus} folder"
        raise ConfigError(f"{root} {what}: expected {name} (id,path,text,speaker) with the "
                          f"audio it names; not found")
    return root / name
