"""``earshot validate CONFIG``: what ``earshot train`` would refuse or skip, before the run.

A training run finds a missing file or a click in the corpus when it reaches it, which may
be hours in. This reads the config (every key and range, as ``train`` does), both
manifests, and every cut's audio header (or, with ``decode=True``, its samples), and says
per split how many cuts are usable and why the others would be skipped:

    train     843 cuts     0.63 h   usable 841   skipped: 1 audio did not load, 1 too short ...
    dev       105 cuts     0.08 h   usable 105

It also names the dev characters the tokenizer fitted on the training texts cannot
produce, and checks ``train.init_from`` and the device. Nothing is written.

>>> # report = validate_experiment(load_config("recipes/an4/crdnn.yaml"))
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import torch

from earshot.config import ExperimentConfig, check
from earshot.errors import AudioError

log = logging.getLogger(__name__)

SHOWN = 10  # problems named per split; the rest are counted


@dataclass
class SplitReport:
    name: str
    manifest: str
    cuts: int = 0
    hours: float = 0.0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)  # "cut id: reason", the first SHOWN

    @property
    def usable(self) -> int:
        return self.cuts - sum(self.skipped.values())

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if len(self.problems) < SHOWN:
            self.problems.append(detail)

    def line(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return (f"{self.name:5s} {self.cuts:7d} cuts {self.hours:8.2f} h   usable {self.usable}"
                + (f"   skipped: {why}" if why else ""))


@dataclass
class Report:
    splits: list[SplitReport]
    unknown_dev_chars: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(split.usable > 0 for split in self.splits)


def validate_experiment(cfg: ExperimentConfig, decode: bool = False) -> Report:
    """Check ``cfg`` and its data as ``earshot train`` would (ConfigError / ManifestError
    for what stops a run before it starts); returns what it would skip."""
    from earshot.data.batching import load_cut_audio
    from earshot.models.artifacts import check_model_dir
    from earshot.models.factory import build_model
    from earshot.tokenizer import train_tokenizer, warn_unknown_chars
    from earshot.train.distributed import Dist
    from earshot.train.environment import check_precision, select_device

    check(cfg)
    check_precision(cfg.train.precision, select_device(cfg.train.device, Dist()))
    if cfg.train.init_from:
        check_model_dir(cfg.train.init_from, deep=True)
    splits, cut_sets = [], []
    for name in ("train", "dev"):
        report, cuts = _read_split(name, getattr(cfg.data, name))
        if name == "train":  # as earshot train: over-long training cuts are left out
            for key in ("max_utterance_duration", "max_duration"):
                limit = getattr(cfg.data, key)
                for cut in cuts:
                    if cut.duration > limit:
                        report.skip(f"longer than data.{key}={limit:g}s",
                                    f"{cut.id}: {cut.duration:.1f} s")
                cuts = [cut for cut in cuts if cut.duration <= limit]
        splits.append(report)
        cut_sets.append(cuts)
    train_cuts, dev_cuts = cut_sets
    tokenizer = train_tokenizer([cut.supervisions[0].text for cut in train_cuts], cfg.tokenizer)
    model = build_model(cfg, tokenizer)
    rate = model.sample_rate
    for report, cuts in zip(splits, cut_sets):
        for cut in cuts:
            try:
                samples = (load_cut_audio(cut, rate).numel() if decode
                           else _header_samples(cut, rate))
            except AudioError as err:
                report.skip("audio did not load", f"{cut.id}: {err}")
                continue
            if int(model.encoded_lengths(torch.tensor([samples]))[0]) <= 0:
                report.skip("too short for one encoder frame",
                            f"{cut.id}: {samples} samples at {rate} Hz give no encoder frame")
    unknown = warn_unknown_chars(tokenizer, [c.supervisions[0].text for c in dev_cuts], str(cfg.data.dev))
    return Report(splits, unknown)


def _read_split(name: str, path: str) -> tuple[SplitReport, list]:
    """A split's cuts, and its report with the rows a CSV import already left out."""
    from earshot.data.manifests import load_cuts, read_manifest
    from earshot.errors import ConfigError

    if not path:
        raise ConfigError(f"config key 'data.{name}': no manifest given")
    if str(path).lower().endswith(".csv"):
        result = read_manifest(path, kind=".csv")  # ManifestError when no row is usable
        cuts, rows = list(result.cuts), result.rows
        report = SplitReport(name, str(path), rows)
        for problem in result.problems:
            report.skip("manifest row unusable", problem)
    else:
        cuts = list(load_cuts(path))
        report = SplitReport(name, str(path), len(cuts))
    report.hours = sum(cut.duration for cut in cuts) / 3600
    return report, cuts


def _header_samples(cut, rate: int) -> int:
    """Samples of the cut at ``rate``, from its audio file's header (nothing decoded)."""
    from earshot.audio import audio_info
    from earshot.data.batching import cut_audio_path, spans_whole_file

    path = cut_audio_path(cut)
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(path, "audio has zero samples")
    seconds = info.duration if spans_whole_file(cut) else min(cut.duration, info.duration - cut.start)
    if seconds <= 0:
        raise AudioError(path, f"segment {cut.start:.3f}s+{cut.duration:.3f}s is outside the audio")
    return round(seconds * rate)


def format_report(report: Report) -> str:
    lines = []
    for split in report.splits:
        lines.append(split.line())
        lines += [f"  {problem}" for problem in split.problems]
        more = sum(split.skipped.values()) - len(split.problems)
        if more > 0:
            lines.append(f"  ... and {more} more")
    if report.unknown_dev_chars:
        chars = ", ".join(repr(c) for c in sorted(report.unknown_dev_chars))
        lines.append(f"dev characters the tokenizer cannot produce: {chars}")
    return "\n".join(lines)
