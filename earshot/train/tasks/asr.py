"""Joint CTC/attention speech recognition (``earshot train``): config in, model directory out.

``train(cfg)`` reads like a table of contents: load the data, fit the tokenizer, build the
model, estimate the front end's statistics (global CMVN), then the engine's epochs
(``earshot.train.engine.fit``): each trains the EncoderDecoderASR on the training CutSet
(scheduled sampling, the CTC weight of ``loss``) and scores it on dev (teacher-forced loss
and greedy attention WER/CER, ``score_dev``), with attention plots of a few dev
utterances. At the end the best epoch (or the average of the best K) is exported as
``<exp_dir>/model`` (see ``earshot.models.artifacts``), its card holding the dev WER/CER of
exactly those weights.

>>> from earshot.config import load_config
>>> cfg = load_config("recipes/fsdd/crdnn.yaml", ["train.epochs=1"])  # doctest: +SKIP
>>> model_dir = train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from earshot.config import DataConfig, ExperimentConfig, ModelCard
from earshot.errors import ConfigError
from earshot.losses import sampling_probability
from earshot.models.artifacts import check_model_dir, save_model_dir
from earshot.models.factory import build_model, init_from_model_dir
from earshot.train.distributed import Dist, barrier, gather_objects
from earshot.train.engine import Run, Task, begin_run, fit, restore
from earshot.train.environment import autocast
from earshot.train.state import TrainState
from earshot.train.tasks import drop_short_rows, drop_unbatchable

if TYPE_CHECKING:
    from lhotse import CutSet

    from earshot.data.batching import Batch
    from earshot.models.asr import EncoderDecoderASR
    from earshot.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


def train(cfg: ExperimentConfig, resume: bool = False) -> Path:
    """Train ``cfg`` and return the exported model directory (``<exp_dir>/model``)."""
    world, device, exp_dir, saved = begin_run(cfg, resume)
    if cfg.train.init_from and saved is None:
        check_model_dir(cfg.train.init_from, deep=True)  # before minutes of data loading
    train_cuts, dev_cuts = load_data(cfg)
    tokenizer = fit_or_load_tokenizer(cfg, exp_dir, train_cuts, saved is not None, world)
    from earshot.tokenizer import warn_unknown_chars

    warn_unknown_chars(tokenizer, [cut.supervisions[0].text for cut in dev_cuts], cfg.data.dev)
    run = build_run(cfg, exp_dir, world, device, tokenizer, train_cuts, dev_cuts,
                    fresh=saved is None)
    check_ctc_can_align(run.model, tokenizer, train_cuts, cfg)
    if saved is not None:
        state = restore(run, *saved)
    else:
        compute_cmvn(run, train_cuts)
        if cfg.train.init_from:
            init_from_model_dir(run.model, cfg, tokenizer, cfg.train.init_from)
        state = TrainState(lr=run.scheduler.lr)
    return fit(run, state)


@dataclass(frozen=True)
class DevResult:
    loss: float
    wer: float
    cer: float
    skipped: int = 0  # dev utterances not scored (audio did not load, too short)

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "wer": self.wer, "cer": self.cer}


class ASRTask(Task):
    """Joint CTC/attention training of an EncoderDecoderASR on a lhotse CutSet."""

    PARTS = ("ctc", "nll")
    AMOUNT = "audio_seconds"
    ROWS = "utterances"
    UNUSABLE = "too short for one encoder frame"

    def __init__(self, cfg: ExperimentConfig, model: EncoderDecoderASR, longest: float = 0.0):
        self.cfg, self.rate = cfg, model.sample_rate
        self.longest = longest  # seconds: the longest training utterance (for the model card)
        # With alpha 0 or 1 one branch gets no gradient, nor does a frozen part; DDP must
        # be told to expect that.
        self.find_unused_parameters = (cfg.loss.ctc_weight in (0.0, 1.0)
                                       or model.may_leave_parameters_unused)
        self.model = model
        if cfg.loss.intermediate_ctc_weight > 0:  # logged beside the top block's CTC
            self.PARTS = ("ctc", "intermediate_ctc", "nll")

    def usable(self, batch: Batch) -> Batch | None:
        return drop_short_utterances(self.model, batch)

    def unreadable(self, batch: Batch) -> int:
        return len(batch.dropped)

    def forward(self, model: torch.nn.Module, batch: Batch, epoch: int, step: int
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # Scheduled sampling counts completed steps/epochs: it starts at 0 on epoch 1.
        prob = sampling_probability(self.cfg.loss.scheduled_sampling, step=step, epoch=epoch - 1)
        self.model.set_training_step(step)
        out = model(batch, self.cfg.loss, prob)
        if out.intermediate_ctc is not None:
            return out.loss, [out.ctc, out.intermediate_ctc, out.nll]
        return out.loss, [out.ctc, out.nll]

    def amount(self, batch: Batch) -> float:
        return float(batch.wav_lens.sum()) / self.rate

    def padded(self, batch: Batch) -> float:
        return float(batch.wavs.numel()) / self.rate

    def dev_pass(self, run: Run) -> DevResult:
        return score_dev(run.model, run.tokenizer, run.dev_loader, run.cfg, run.device, run.dist)

    def after_validation(self, run: Run, epoch: int) -> None:
        plot_dev_alignments(run, epoch)

    def save_export(self, run: Run, out: Path, epochs: list[int], dev: DevResult,
                    state: TrainState) -> None:
        card = model_card(run.cfg, run.model, dev, run.train_hours, epochs, state.epoch,
                          self.longest)
        save_model_dir(out, run.cfg, run.tokenizer, copy.deepcopy(run.model).cpu(), card)
        log.info("exported epoch(s) %s to %s (dev WER %.2f CER %.2f)",
                 ", ".join(map(str, epochs)), out, dev.wer, dev.cer)


# ---------------------------------------------------------------------------
# setup


def load_data(cfg: ExperimentConfig) -> tuple[CutSet, CutSet]:
    """Train and dev CutSets; over-long training cuts are left out (and counted)."""
    from earshot.data.manifests import load_cuts

    for key in ("train", "dev"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}': no manifest given")
    data = cfg.data
    train_cuts = load_cuts(data.train, shuffle_shards=data.shuffle_shards, seed=cfg.train.seed,
                           strict=data.strict)
    return drop_unbatchable(train_cuts, data, data.train), load_cuts(data.dev, strict=data.strict)


def fit_or_load_tokenizer(cfg: ExperimentConfig, exp_dir: Path, train_cuts: CutSet, resuming: bool,
                          world: Dist) -> Tokenizer:
    """Train the tokenizer on the training transcripts (rank 0), or reload it on resume."""
    from earshot.tokenizer import load_tokenizer, train_tokenizer

    tok_dir = exp_dir / TOKENIZER_DIR
    if not resuming and world.is_main:
        texts = [cut.supervisions[0].text for cut in train_cuts]
        train_tokenizer(texts, cfg.tokenizer).save(tok_dir)
    barrier(world)
    tokenizer = load_tokenizer(tok_dir)
    log.info("tokenizer: %s", tokenizer)
    return tokenizer


def build_run(cfg: ExperimentConfig, exp_dir: Path, world: Dist, device: torch.device,
              tokenizer: Tokenizer, train_cuts: CutSet, dev_cuts: CutSet,
              fresh: bool = True) -> Run:
    """The model (fresh weights from ``train.seed``), this rank's loaders and the Run. The
    training loader writes each epoch's batches to ``exp_dir/plans`` (a resumed epoch
    seeks into them); a ``fresh`` run first removes what an earlier run left there."""
    from earshot.data.batching import make_loader
    from earshot.data.epochs import PLANS_DIR, clear_plans
    from earshot.data.corruption import Corruption
    from earshot.data.manifests import manifest_stats

    if fresh:
        clear_plans(exp_dir / PLANS_DIR, world.rank)
    model = build_model(cfg, tokenizer).to(device)
    rate, data = model.sample_rate, cfg.data
    shard = {"world_size": world.world_size, "rank": world.rank}
    train_loader = make_loader(train_cuts, tokenizer, rate, data.max_duration, shuffle=True,
                               seed=cfg.train.seed, num_buckets=data.num_buckets,
                               num_workers=data.num_workers, speed_factors=data.speed_perturb,
                               keep_empty=True, corruption=Corruption.from_config(data, rate),
                               prefetch_factor=data.prefetch_factor,
                               pin_memory=device.type == "cuda", strict=data.strict,
                               plan_dir=exp_dir / PLANS_DIR, **shard)
    dev_loader = make_loader(dev_cuts, tokenizer, rate, data.max_duration, shuffle=False,
                             num_buckets=data.num_buckets, num_workers=data.num_workers,
                             even=False, keep_empty=True, **shard)
    train_stats, dev_stats = manifest_stats(train_cuts), manifest_stats(dev_cuts)
    hours = train_stats.hours
    return Run.start(cfg, exp_dir, world, device, model=model,
                     task=ASRTask(cfg, model, train_stats.longest),
                     train_loader=train_loader, dev_loader=dev_loader, tokenizer=tokenizer,
                     train_hours=hours, data=f"train: {train_stats.cuts} cuts ({hours:.2f} h); "
                                             f"dev: {dev_stats.cuts} cuts")


def check_ctc_can_align(model: torch.nn.Module, tokenizer: Tokenizer, cuts: CutSet,
                        cfg: ExperimentConfig) -> None:
    """CTC needs at least one encoder frame per token: warn about the training utterances
    the encoder's time subsampling leaves too few frames (their CTC loss is 0, they teach
    the CTC head nothing), and stop before training when that is every one of them."""
    if cfg.loss.ctc_weight == 0:
        return
    device = next(model.parameters()).device
    short, count, total = [], 0, 0
    for chunk in chunked(cuts, 4096):  # a lazy manifest is never held whole
        samples = torch.tensor([round(cut.duration * model.sample_rate) for cut in chunk])
        frames = model.encoded_lengths(samples.to(device)).cpu().tolist()
        for cut, f in zip(chunk, frames):
            n = len(tokenizer.encode(cut.supervisions[0].text))
            if f < n:
                count += 1
                if len(short) < 3:
                    short.append((cut.id, f, n))
        total += len(chunk)
    if not count:
        return
    shown = ", ".join(f"'{uid}' ({f} frames, {n} tokens)" for uid, f, n in short)
    what = (f"{count} of {total} training utterances have fewer encoder frames than "
            f"tokens, so CTC cannot align them ({shown}); the encoder subsamples time too much "
            f"for them (model.encoder's pooling or subsampling)")
    if count == total:
        raise ConfigError(what)
    log.warning(what)


@torch.no_grad()
def compute_cmvn(run: Run, train_cuts: CutSet) -> None:
    """The front end's corpus statistics (global CMVN for fbank/MFCC; nothing for a front
    end that keeps none) over the training set's first ``data.cmvn_utterances`` (a
    pre-shuffled manifest makes them a random sample). Each rank reads its shard; sums and counts
    are added over ranks before the mean and std are taken."""
    from earshot.data.batching import make_loader

    model, data = run.model, run.cfg.data
    acc = model.new_statistics()
    if acc is None:
        return
    if data.cmvn_utterances:
        train_cuts = train_cuts.subset(first=data.cmvn_utterances)  # fewer: all of them
    loader = make_loader(train_cuts, run.tokenizer, model.sample_rate, data.max_duration,
                         shuffle=False, num_buckets=data.num_buckets, num_workers=data.num_workers,
                         world_size=run.dist.world_size, rank=run.dist.rank, even=False)
    for batch in tqdm(loader, desc="feature statistics", unit="batch", disable=not run.dist.is_main):
        model.accumulate_statistics(acc, batch.wavs.to(run.device), batch.wav_lens.to(run.device))
    acc.all_reduce()
    model.set_statistics(acc)


def chunked(items, size: int):
    """Lists of up to ``size`` consecutive items of an iterable."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def drop_short_utterances(model: EncoderDecoderASR, batch: Batch) -> Batch | None:
    """The batch without utterances too short to give one encoder frame (warned about,
    naming each and its length); None when none is left."""
    return drop_short_rows(batch, model.encoded_lengths(batch.wav_lens), 1, "encoder frames (too short)")


# ---------------------------------------------------------------------------
# dev


@torch.no_grad()
def score_dev(model: EncoderDecoderASR, tok: Tokenizer, loader: torch.utils.data.DataLoader,
              cfg: ExperimentConfig, device: torch.device, world: Dist = Dist()) -> DevResult:
    """Dev loss (teacher forced) and greedy attention WER/CER (percent) of ``model`` on
    ``loader`` (this rank's share; the result is over all ranks)."""
    from earshot.decoding.greedy import greedy_attention
    from earshot.metrics import error_rates

    model.eval()
    loss_sum, utts, refs, hyps, skipped = 0.0, 0, [], [], 0
    for batch in loader:
        rows, skipped = len(batch), skipped + len(batch.dropped)
        batch = drop_short_utterances(model, batch) if rows else None
        skipped += rows - (len(batch) if batch is not None else 0)
        if batch is None:
            continue
        batch = batch.to(device)
        with autocast(cfg.train.precision, device):
            loss_sum += model(batch, cfg.loss, 0.0).loss.item() * len(batch)
            ids = greedy_attention(model, model.encode(batch.wavs, batch.wav_lens).memory,
                                   tok.bos_id, tok.eos_id, cfg.decode.max_len_ratio)
        utts += len(batch)
        refs += [tok.normalize(text) for text in batch.texts]
        hyps += [tok.decode(row) for row in ids]
    if world.world_size > 1:  # every rank's share of the dev set
        parts = gather_objects(world, (loss_sum, utts, refs, hyps, skipped))
        loss_sum, utts, skipped = (sum(p[i] for p in parts) for i in (0, 1, 4))
        refs, hyps = [r for p in parts for r in p[2]], [h for p in parts for h in p[3]]
    rates = error_rates(refs, hyps)
    return DevResult(loss_sum / max(utts, 1), rates.wer, rates.cer, skipped)


def plot_dev_alignments(run: Run, epoch: int) -> None:
    """Attention plots of the first ``train.plot_alignments`` dev utterances (rank 0's
    first dev batch: the same ones every epoch) into ``EXP_DIR/plots/``."""
    from earshot.train import monitor

    count = run.cfg.train.plot_alignments
    batch = next(iter(run.dev_loader), None) if count else None
    batch = drop_short_utterances(run.model, batch) if batch is not None and len(batch) else None
    if batch is None:
        return
    batch = batch.select(torch.arange(min(count, len(batch)))).to(run.device)
    with autocast(run.cfg.train.precision, run.device):
        items = monitor.alignments(run.model, batch, run.tokenizer)
    monitor.plot_alignments(items, run.exp_dir / monitor.PLOTS_DIR, epoch)


# ---------------------------------------------------------------------------
# export


def model_card(cfg: ExperimentConfig, model: torch.nn.Module, dev: DevResult, train_hours: float,
               exported_epochs: list[int], epochs: int, longest: float = 0.0) -> ModelCard:
    """The card of a model directory: corpus, training hours, the dev WER/CER of exactly
    the exported weights, the epochs trained and exported, the parameter count, the longest
    training utterance and the CTC loss weight."""
    return ModelCard(corpus=corpus_name(cfg.data), train_hours=round(train_hours, 3),
                     dev_wer=round(dev.wer, 3), dev_cer=round(dev.cer, 3), epochs=epochs,
                     exported_epochs=tuple(exported_epochs),
                     parameters=sum(p.numel() for p in model.parameters()),
                     longest_utterance=round(longest, 3), ctc_weight=cfg.loss.ctc_weight)


def corpus_name(data: DataConfig) -> str:
    """``data.corpus``, else the folder holding the training manifest (data/an4/... -> an4)."""
    return data.corpus or Path(data.train).parent.name
