"""CutSets -> padded batches of waveforms and token ids, bucketed by duration.

A lhotse ``DynamicBucketingSampler`` groups cuts of similar length into CutSets of at
most ``max_duration`` seconds; ``EpochBatches`` deals those batches out to the ranks of a
data-parallel job (global batch ``i`` goes to rank ``i % world_size``; a last round that
would leave some rank without a batch is dropped, so every rank steps equally often) and
can start an epoch part-way through. ``CutDataset`` turns each CutSet into a ``Batch``.
Audio that fails to load at run time is warned about and dropped from its batch, its id
kept in ``Batch.dropped`` so that the consumer can count it. A batch left empty is skipped
by the loader, unless it was made with ``keep_empty=True`` (training: every rank and a
resumed epoch must count the same batches), which yields it with no rows.

>>> loader = make_loader(cuts, tokenizer, 16000, max_duration=60.0, shuffle=True)  # doctest: +SKIP
>>> set_epoch(loader, epoch)  # doctest: +SKIP
>>> for batch in loader:  # doctest: +SKIP
...     batch = batch.to("cuda")

Resuming mid-epoch: ``set_epoch(loader, epoch, skip=n)`` on a fresh loader yields that
epoch from its ``n``-th batch on. A training loader (``plan_dir``) writes each epoch's
batches down when first drawn and seeks to batch ``n`` in that plan; without one the
skipped batches are drawn again from the sampler (cut metadata only), never loaded.
The same holds with loader workers, because the position is counted where batches are
consumed, not where workers prefetch them. Speed
perturbation draws each cut's factor from (seed, epoch, cut id) as the sampler lists it,
so duration buckets and the batch budget see the perturbed lengths, and a resumed epoch
perturbs exactly as the uninterrupted one did, in any worker.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soxr
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import LazyMapper
from lhotse.utils import fastcopy
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from earshot.audio import decode_audio_bytes, load_audio
from earshot.data.epochs import EpochBatches
from earshot.errors import AudioError

if TYPE_CHECKING:
    from earshot.data.corruption import Corruption
    from earshot.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One padded mini-batch, rows sorted by waveform length (longest first)."""

    ids: list[str]
    wavs: torch.Tensor  # (B, S) float32, zero padded
    wav_lens: torch.Tensor  # (B,) long, samples
    texts: list[str]  # raw transcripts (not normalised)
    tokens: torch.Tensor  # (B, U) long, padded with tokenizer.pad_id; no bos/eos
    token_lens: torch.Tensor  # (B,) long
    dropped: tuple[str, ...] = ()  # ids of the sampled cuts whose audio did not load

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dropped: tuple[str, ...] = ()) -> Batch:
        """A batch with no rows (every cut's audio failed to load)."""
        none = torch.zeros(0, dtype=torch.long)
        return cls([], torch.zeros(0, 0), none, [], torch.zeros(0, 0, dtype=torch.long), none,
                   tuple(dropped))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        move = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **move)

    def select(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (B',) of the batch, order kept; padding trimmed to the longest."""
        rows = index.tolist()
        wav_lens, token_lens = self.wav_lens[index], self.token_lens[index]
        return Batch(
            ids=[self.ids[i] for i in rows],
            wavs=self.wavs[index, : int(wav_lens.max())],
            wav_lens=wav_lens,
            texts=[self.texts[i] for i in rows],
            tokens=self.tokens[index, : int(token_lens.max())],
            token_lens=token_lens,
        )

    def pin_memory(self) -> Batch:
        # Called by DataLoader(pin_memory=True) on custom batch types.
        pinned = {f.name: getattr(self, f.name).pin_memory()
                  for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **pinned)


def load_cut_audio(cut: Cut, sample_rate: int) -> torch.Tensor:
    """The cut's waveform (S,) at ``sample_rate``; only its [start, start+duration) span.

    Raises ``AudioError`` when the file cannot be used or the span is empty.
    """
    recording = cut.recording
    if recording is not None and recording.sources[0].type == "shar":  # read from a shard
        from earshot.data.shards import load_shard_bytes

        wav = decode_audio_bytes(load_shard_bytes(cut), f"cut '{cut.id}' (in a shard)",
                                 sample_rate)
        if spans_whole_file(cut):
            return wav
        first = round(cut.start * sample_rate)
        return wav[first: first + round(cut.duration * sample_rate)]
    path = cut_audio_path(cut)
    if spans_whole_file(cut):
        return load_audio(path, sample_rate)  # no rounding of the span
    try:  # only the segment is decoded (a cut of a long recording)
        return load_audio(path, sample_rate, span=(cut.start, cut.duration))
    except AudioError as err:
        if err.reason != "audio has zero samples":
            raise
        raise AudioError(path, f"segment {cut.start:.3f}s+{cut.duration:.3f}s is outside "
                               f"the audio") from None


def cut_audio_path(cut: Cut) -> str:
    """The audio file a cut reads; AudioError naming the cut when it has none."""
    recording = cut.recording
    if recording is None or recording.sources[0].type != "file":
        raise AudioError(cut.id, "cut has no audio file")
    return recording.sources[0].source


def spans_whole_file(cut: Cut) -> bool:
    return cut.start == 0 and abs(cut.duration - cut.recording.duration) < 1e-6


def speed_perturb(wav: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """Play ``wav`` (S,) ``factor`` times faster (pitch moves too), as Kaldi's 3-way
    speed perturbation does: resample from sample_rate * factor to sample_rate."""
    if factor == 1.0:
        return wav
    out = soxr.resample(wav.numpy(), round(sample_rate * factor), sample_rate, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class SpeedPerturbation:
    """Draws each cut's speed factor from ``factors`` with a generator seeded by (seed,
    epoch, cut id), the same in every run, worker and resume, and gives the sampler the
    cut as it will be: its duration divided by the factor (so duration buckets and the
    batch budget see the perturbed lengths), the factor and the source duration kept in
    ``cut.custom``."""

    def __init__(self, factors: tuple[float, ...], seed: int = 0) -> None:
        self.factors, self.seed, self.epoch = tuple(factors), seed, 0

    def factor(self, cut_id: str) -> float:
        # random.Random hashes a str seed with SHA-512: the same in every process.
        return random.Random(f"{self.seed}/{self.epoch}/{cut_id}").choice(self.factors)

    def __call__(self, cut: Cut) -> Cut:
        factor = self.factor(cut.id)
        if factor == 1.0:
            return cut
        custom = {**(cut.custom or {}), SPEED_KEY: factor, SOURCE_DURATION_KEY: cut.duration}
        return fastcopy(cut, duration=cut.duration / factor, custom=custom)


SPEED_KEY, SOURCE_DURATION_KEY = "earshot_speed", "earshot_source_duration"


def unperturbed(cut: Cut) -> tuple[Cut, float]:
    """The cut as its source holds it, and the speed factor to play it at."""
    custom = cut.custom or {}
    if SPEED_KEY not in custom:
        return cut, 1.0
    rest = {k: v for k, v in custom.items() if k not in (SPEED_KEY, SOURCE_DURATION_KEY)}
    return fastcopy(cut, duration=custom[SOURCE_DURATION_KEY], custom=rest or None), custom[SPEED_KEY]


class CutDataset(Dataset):
    """Map-style dataset indexed by a CutSet (from the sampler); returns Batch or None.

    A cut the sampler marked for speed perturbation (``SpeedPerturbation``) is played at
    its factor; ``corruption`` (reverberation, noise) draws from a generator seeded by
    (seed, epoch, cut id) as well: the same in every run, worker and resume.
    """

    def __init__(self, tokenizer: Tokenizer | None, sample_rate: int, seed: int = 0,
                 corruption: Corruption | None = None, strict: bool = False) -> None:
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.seed = seed
        self.corruption = corruption
        self.strict = strict  # an unreadable cut raises instead of being dropped
        self.epoch = 0

    def __getitem__(self, cuts: CutSet) -> Batch:
        loaded, dropped = [], []
        for cut in cuts:
            wav = self._load(cut)
            if wav is None:
                dropped.append(cut.id)
            else:
                loaded.append((cut, wav))
        if not loaded:
            return Batch.empty(tuple(dropped))
        loaded.sort(key=lambda pair: pair[1].numel(), reverse=True)
        batch = collate([c.id for c, _ in loaded], [w for _, w in loaded],
                        [c.supervisions[0].text if c.supervisions else "" for c, _ in loaded],
                        self.tokenizer)
        return dataclasses.replace(batch, dropped=tuple(dropped))

    def _load(self, cut: Cut) -> torch.Tensor | None:
        source, factor = unperturbed(cut)
        try:
            wav = speed_perturb(load_cut_audio(source, self.sample_rate), self.sample_rate, factor)
            if self.corruption is not None:
                wav = self.corruption(wav, self.seed, self.epoch, cut.id)
            return wav
        except AudioError as err:
            if self.strict:
                raise AudioError(err.path, f"{err.reason} (cut '{cut.id}'; data.strict is on)") from None
            logger.warning("dropping cut '%s' from its batch: %s: %s", cut.id, err.path, err.reason)
            return None


def collate(ids: list[str], wavs: list[torch.Tensor], texts: list[str],
            tokenizer: Tokenizer | None) -> Batch:
    """Pad waveforms (S,) with zeros and token ids with ``tokenizer.pad_id``; without a
    tokenizer (untranscribed audio, e.g. for pretraining) every row has no tokens."""
    if tokenizer is None:
        token_lists, pad_id = [torch.zeros(0, dtype=torch.long) for _ in texts], 0
    else:
        token_lists = [torch.tensor(tokenizer.encode(t), dtype=torch.long) for t in texts]
        pad_id = tokenizer.pad_id
    return Batch(
        ids=ids,
        wavs=pad_sequence(wavs, batch_first=True),
        wav_lens=torch.tensor([w.numel() for w in wavs], dtype=torch.long),
        texts=texts,
        tokens=pad_sequence(token_lists, batch_first=True, padding_value=pad_id),
        token_lens=torch.tensor([t.numel() for t in token_lists], dtype=torch.long),
    )


class _SkipEmptyLoader(DataLoader):
    """A DataLoader that leaves out batches whose every cut failed to load."""

    def __iter__(self):
        return (batch for batch in super().__iter__() if len(batch))


def _as_is(item):
    return item


def make_loader(cuts: CutSet, tokenizer: Tokenizer | None, sample_rate: int, max_duration: float,
                shuffle: bool, seed: int = 0, num_buckets: int = 10, num_workers: int = 0,
                drop_last: bool = False, speed_factors: tuple[float, ...] = (),
                world_size: int = 1, rank: int = 0, even: bool = True,
                keep_empty: bool = False, corruption: Corruption | None = None,
                prefetch_factor: int = 2, pin_memory: bool = False,
                strict: bool = False, plan_dir: Path | None = None) -> DataLoader:
    """A DataLoader of ``Batch`` with at most ``max_duration`` seconds of audio each.

    The sampler (``loader.sampler``) is an ``EpochBatches`` over a duration-bucketed lhotse
    sampler of the whole CutSet, dealing batches to ``rank`` of ``world_size``: call
    ``set_epoch(loader, e)`` before each epoch for a new shuffle. A cut longer than
    ``max_duration`` comes alone in its batch (filter them first: ``drop_long_cuts``).
    With ``keep_empty`` a batch whose every cut failed to load is yielded (no rows, the
    ids in ``dropped``) instead of left out. With workers, each keeps ``prefetch_factor``
    batches ready; ``pin_memory`` (for CUDA) puts batches in page-locked memory, so that
    ``batch.to("cuda", non_blocking=True)`` overlaps the copy. With ``strict`` a cut
    whose audio does not load raises instead of being dropped. With ``plan_dir`` each
    epoch's batches are written down there when first drawn (``EpochPlan``).
    """
    from earshot.data.shards import sharded_sources

    followers = sharded_sources(cuts)
    if speed_factors:  # re-drawn on every pass: each epoch has its own factors
        perturbation = SpeedPerturbation(speed_factors, seed)
        cuts = CutSet(LazyMapper(cuts, perturbation))
        followers.append(perturbation)
    with warnings.catch_warnings():
        # An eager CutSet here is a small one (a CSV import, a test's); lhotse's advice to
        # read it lazily is noise.
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        inner = _sampler(cuts, max_duration, shuffle, seed, num_buckets, drop_last)
    dataset = CutDataset(tokenizer, sample_rate, seed, corruption, strict)
    # Workers draw nothing at random (speed factors are seeded per cut); the generator
    # only pins the base seed torch hands them.
    loader = DataLoader if keep_empty else _SkipEmptyLoader
    return loader(dataset, sampler=EpochBatches(inner, world_size, rank, even, followers, plan_dir),
                  batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                  prefetch_factor=prefetch_factor if num_workers else None,
                  pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))


def _sampler(cuts: CutSet, max_duration: float, shuffle: bool, seed: int, num_buckets: int,
             drop_last: bool):
    """Duration-bucketed sampler over every cut (EpochBatches deals batches to ranks, so
    lhotse is told world size 1); lhotse needs 2 <= buckets <= cuts, so tiny sets get one
    plain duration-budgeted sampler instead. A lazy CutSet is shuffled through a buffer of
    SHUFFLE_BUFFER cuts (a pre-shuffled manifest, ``earshot prepare --shuffle``, makes that
    as good as a full shuffle); only the first BUCKET_ESTIMATE cuts are read to place the
    bucket edges."""
    small = _fewer_than(cuts, 2) or num_buckets < 2
    if small:
        return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                drop_last=drop_last, world_size=1, rank=0)
    buckets = num_buckets if not _fewer_than(cuts, num_buckets) else _count(cuts)
    return DynamicBucketingSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                   num_buckets=buckets, drop_last=drop_last, world_size=1, rank=0,
                                   buffer_size=SHUFFLE_BUFFER,
                                   num_cuts_for_bins_estimate=BUCKET_ESTIMATE)


SHUFFLE_BUFFER = 20_000  # cuts a lazy manifest is shuffled and bucketed through
BUCKET_ESTIMATE = 10_000  # cuts read to place the duration buckets' edges


def _fewer_than(cuts: CutSet, n: int) -> bool:
    """Whether ``cuts`` holds fewer than ``n`` cuts, reading at most ``n`` of them."""
    return sum(1 for _ in itertools.islice(cuts, n)) < n


def _count(cuts: CutSet) -> int:
    return sum(1 for _ in cuts)


def set_epoch(loader: DataLoader, epoch: int, skip: int = 0) -> None:
    """Start ``epoch`` (its shuffle and speed factors) at this rank's batch ``skip``."""
    loader.sampler.set_epoch(epoch, skip)
    loader.dataset.epoch = epoch


def batches_in_epoch(loader: DataLoader, epoch: int) -> int:
    """How many batches ``loader`` yields this rank in ``epoch``, counted from the cut
    metadata (no audio is read). Batches whose every cut then fails to load are left out
    at run time (unless the loader keeps empty batches), so the real count can be lower."""
    return loader.sampler.num_batches(epoch)


def drop_long_cuts(cuts: CutSet, max_seconds: float) -> tuple[CutSet, list[Cut]]:
    """Cuts of at most ``max_seconds`` (lazily filtered when ``cuts`` is lazy), and the
    longer ones, which one pass over the metadata finds."""
    longer = [c for c in cuts if c.duration > max_seconds]
    if not longer:
        return cuts, []
    return cuts.filter(_ShorterThan(max_seconds)), longer


class _ShorterThan:
    """A picklable ``cut.duration <= seconds`` (loader workers may receive the filter)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, cut: Cut) -> bool:
        return cut.duration <= self.seconds
