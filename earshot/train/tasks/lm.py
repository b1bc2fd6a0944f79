"""The RNN language model (``earshot train-lm``), trained on text with an ASR model's
tokenizer for shallow fusion in beam search.

Text comes from a CutSet manifest (the supervisions' text, e.g. the ASR training
transcripts) or a plain text file (one sentence per line), in batches of sentences
(``sentence_loader``). Training runs on the engine (``earshot.train.engine.fit``): the
same checkpoints inside and between epochs, ``--resume``, precision, DDP, skipped updates
and ``metrics.jsonl`` / TensorBoard as ``earshot train``, in ``train.exp_dir``. Each epoch
reports the dev loss (per token, eos included) and perplexity; the best epoch (or the
mean of the ``train.average_best`` best) is exported, atomically, as an LM directory
``<train.exp_dir>/model`` (see models/lm.py); ``--lm`` accepts the experiment directory
too.

>>> from earshot.config import load_config, LMExperimentConfig      # doctest: +SKIP
>>> cfg = load_config("recipes/an4/lm.yaml", cls=LMExperimentConfig)   # doctest: +SKIP
>>> train_lm(cfg)                                                    # doctest: +SKIP
PosixPath('exp/an4/lm/model')
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from earshot.config import LMExperimentConfig, check
from earshot.data.epochs import EpochBatches
from earshot.errors import ConfigError
from earshot.models.artifacts import save_lm_dir
from earshot.models.lm import RNNLM
from earshot.train.distributed import reduce_sums
from earshot.train.engine import Run, Task, begin_run, fit, restore
from earshot.train.environment import autocast
from earshot.train.state import TrainState

if TYPE_CHECKING:
    from earshot.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def train_lm(cfg: LMExperimentConfig, resume: bool = False) -> Path:
    """Train on the engine, export the best epoch(s); returns the LM directory."""
    check(cfg)  # (texts and tokenizer are read before the experiment directory is made)
    tokenizer = _asr_tokenizer(cfg.data.asr_model)
    from earshot.tokenizer import warn_unknown_chars

    train_texts = read_texts(cfg.data.train_text, "data.train_text")
    warn_unknown_chars(tokenizer, train_texts, cfg.data.train_text)
    train_seqs = encode_texts(train_texts, tokenizer)
    dev_seqs = encode_texts(read_texts(cfg.data.dev_text, "data.dev_text"), tokenizer) \
        if cfg.data.dev_text else None
    train_seqs, dev_seqs = _split_dev(train_seqs, dev_seqs, cfg.train.seed)
    world, device, exp_dir, saved = begin_run(cfg, resume)
    model = RNNLM(cfg.model, tokenizer.vocab_size).to(device)
    shard = {"world_size": world.world_size, "rank": world.rank}
    train_loader = sentence_loader(train_seqs, tokenizer.pad_id, cfg.data.batch_size, True,
                                   cfg.train.seed, **shard)
    dev_loader = sentence_loader(dev_seqs, tokenizer.pad_id, cfg.data.batch_size, False,
                                 cfg.train.seed, even=False, **shard)
    run = Run.start(cfg, exp_dir, world, device, model=model, task=LMTask(tokenizer.pad_id),
                    train_loader=train_loader, dev_loader=dev_loader, tokenizer=tokenizer,
                    data=f"{len(train_seqs)} training and {len(dev_seqs)} dev sentences")
    state = restore(run, *saved) if saved is not None else TrainState(lr=run.scheduler.lr)
    return fit(run, state)


# ---------------------------------------------------------------------------
# batches of sentences


@dataclass
class SentenceBatch:
    """Padded [bos] y -> y [eos] pairs; ``ids`` are the sentences' indices."""

    ids: list[str]
    inputs: torch.Tensor  # (B, L) long, padded with pad
    targets: torch.Tensor  # (B, L) long, padded with pad (ignored by the loss)
    lens: torch.Tensor  # (B,) long

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SentenceBatch:
        return SentenceBatch(self.ids, self.inputs.to(device), self.targets.to(device), self.lens.to(device))

    def select(self, index: torch.Tensor) -> SentenceBatch:
        lens = self.lens[index]
        width = int(lens.max())
        return SentenceBatch([self.ids[i] for i in index.tolist()], self.inputs[index, :width],
                             self.targets[index, :width], lens)


class SentenceSampler:
    """Batches of ``batch_size`` sentence indices, reshuffled each epoch from (seed, epoch)."""

    def __init__(self, count: int, batch_size: int, shuffle: bool, seed: int):
        self.count, self.batch_size, self.shuffle, self.seed = count, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(self.count))
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        for start in range(0, self.count, self.batch_size):
            yield order[start:start + self.batch_size]


class SentenceDataset(Dataset):
    def __init__(self, seqs: list[list[int]], pad: int):
        self.seqs, self.pad, self.epoch = seqs, pad, 0

    def __getitem__(self, indices: list[int]) -> SentenceBatch:
        batch = [self.seqs[i] for i in indices]
        lens = torch.tensor([len(seq) - 1 for seq in batch])
        inputs = torch.full((len(batch), int(lens.max())), self.pad, dtype=torch.long)
        targets = inputs.clone()
        for row, seq in enumerate(batch):
            inputs[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            targets[row, : len(seq) - 1] = torch.tensor(seq[1:])
        return SentenceBatch([str(i) for i in indices], inputs, targets, lens)


def sentence_loader(seqs: list[list[int]], pad: int, batch_size: int, shuffle: bool, seed: int,
                    world_size: int = 1, rank: int = 0, even: bool = True) -> DataLoader:
    """Sentence batches dealt to ranks like ``make_loader``'s (``EpochBatches``)."""
    sampler = EpochBatches(SentenceSampler(len(seqs), batch_size, shuffle, seed), world_size, rank, even)
    return DataLoader(SentenceDataset(seqs, pad), sampler=sampler, batch_size=None, collate_fn=_as_is)


def _as_is(batch: SentenceBatch) -> SentenceBatch:
    return batch


# ---------------------------------------------------------------------------
# the task


@dataclass(frozen=True)
class LMDevResult:
    loss: float  # nats per token
    perplexity: float
    skipped: int = 0  # (no dev sentence is ever left out)

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "perplexity": self.perplexity}


class LMTask(Task):
    """Next-token cross-entropy of an RNNLM, averaged over tokens (eos included)."""

    NAME = "language model"
    AMOUNT = "tokens"
    ROWS = "sentences"

    def __init__(self, pad: int):
        self.pad = pad

    def forward(self, model: torch.nn.Module, batch: SentenceBatch, epoch: int, step: int
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        nll, tokens = _batch_nll(model, batch, self.pad)
        return nll / max(tokens, 1), []

    def weight(self, batch: SentenceBatch) -> int:
        return int(batch.lens.sum())

    def amount(self, batch: SentenceBatch) -> float:
        return float(batch.lens.sum())

    def padded(self, batch: SentenceBatch) -> float:
        return float(batch.inputs.numel())

    @torch.no_grad()
    def dev_pass(self, run: Run) -> LMDevResult:
        """Loss per dev token and perplexity, over all ranks."""
        run.model.eval()
        sums = np.zeros(2)
        for batch in run.dev_loader:
            with autocast(run.cfg.train.precision, run.device):
                nll, tokens = _batch_nll(run.model, batch.to(run.device), self.pad)
            sums += [float(nll), tokens]
        nll, tokens = reduce_sums(run.dist, run.device, sums).tolist()
        loss = nll / max(tokens, 1)
        return LMDevResult(loss, math.exp(min(loss, 50.0)))

    def save_export(self, run: Run, out: Path, epochs: list[int], dev: LMDevResult,
                    state: TrainState) -> None:
        save_lm_dir(out, copy.deepcopy(run.model).cpu().eval(), run.cfg, run.tokenizer)
        log.info("exported epoch(s) %s to %s (dev perplexity %.2f)",
                 ", ".join(map(str, epochs)), out, dev.perplexity)


def read_texts(path: str, key: str) -> list[str]:
    """Sentences from a CutSet manifest (.jsonl / .jsonl.gz) or a plain text file."""
    p = Path(path)
    if not path or not p.is_file():
        raise ConfigError(f"config key '{key}': text file or manifest '{path}' not found")
    if p.name.endswith((".jsonl", ".jsonl.gz")):
        from lhotse import CutSet

        cuts = CutSet.from_file(p)
        texts = [s.text for cut in cuts for s in cut.supervisions if s.text]
    else:
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    kept = [t for t in texts if t]
    if not kept:
        raise ConfigError(f"config key '{key}': '{path}' holds no text")
    log.info("%s: %d sentences%s", path, len(kept),
             f" ({len(texts) - len(kept)} empty left out)" if len(kept) < len(texts) else "")
    return kept


def encode_texts(texts: list[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Each sentence as [bos] + tokens + [eos]."""
    return [[tokenizer.bos_id] + tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]


def _batch_nll(lm: RNNLM, batch: SentenceBatch, pad: int) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL of a batch (in float32), and its token count."""
    logits = lm(batch.inputs, batch.lens)
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(),
                                            ignore_index=pad, reduction="sum")
    return nll, int(batch.lens.sum())


def _asr_tokenizer(model_dir: str) -> Tokenizer:
    from earshot.tokenizer import load_tokenizer

    tok_dir = Path(model_dir) / "tokenizer"
    if not model_dir or not tok_dir.is_dir():
        raise ConfigError(f"config key 'data.asr_model': '{model_dir}' has no tokenizer/ "
                          "directory (give the trained ASR model directory)")
    return load_tokenizer(tok_dir)


def _split_dev(train: list[list[int]], dev: list[list[int]] | None, seed: int
               ) -> tuple[list[list[int]], list[list[int]]]:
    """Without a dev text, hold out 5% of the training sentences (at least one)."""
    if dev:
        return train, dev
    if len(train) < 2:
        raise ConfigError("config key 'data.dev_text': needed when train_text has one sentence")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, len(train) // 20)
    return [train[i] for i in order[n_dev:]], [train[i] for i in order[:n_dev]]
