"""Train the RNN language model on text with an ASR model's tokenizer (`earshot train-lm`).

Text comes from a CutSet manifest (the supervisions' text, e.g. the ASR training
transcripts) or a plain text file (one sentence per line). Each epoch reports the dev
perplexity (per token, eos included); the epoch with the best one is exported as an
LM directory (see models/lm.py).

>>> from earshot.config import load_config, LMExperimentConfig      # doctest: +SKIP
>>> cfg = load_config("recipes/an4/lm.yaml", cls=LMExperimentConfig)   # doctest: +SKIP
>>> train_lm(cfg)                                                    # doctest: +SKIP
PosixPath('exp/an4/lm')
"""

from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path

import torch

from earshot.config import LMExperimentConfig
from earshot.errors import ConfigError
from earshot.models.lm import RNNLM, save_lm_dir

log = logging.getLogger(__name__)


def train_lm(cfg: LMExperimentConfig) -> Path:
    """Train, report dev perplexity per epoch, export the best epoch; returns the LM dir."""
    tc = cfg.train
    tokenizer = _asr_tokenizer(tc.asr_model)
    train_seqs = encode_texts(read_texts(tc.train_text, "train.train_text"), tokenizer)
    dev_seqs = encode_texts(read_texts(tc.dev_text, "train.dev_text"), tokenizer) \
        if tc.dev_text else None
    train_seqs, dev_seqs = _split_dev(train_seqs, dev_seqs, tc.seed)
    device = _device(tc.device)
    torch.manual_seed(tc.seed)
    lm = RNNLM(cfg.model, tokenizer.vocab_size).to(device)
    optim = torch.optim.Adam(lm.parameters(), lr=tc.lr)
    best, best_state = math.inf, None
    for epoch in range(1, tc.epochs + 1):
        train_ppl = run_epoch(lm, train_seqs, tokenizer.pad_id, tc.batch_size, device, optim,
                              tc.grad_clip, seed=tc.seed + epoch)
        dev_ppl = run_epoch(lm, dev_seqs, tokenizer.pad_id, tc.batch_size, device)
        print(f"epoch {epoch}: train perplexity {train_ppl:.2f}, dev perplexity {dev_ppl:.2f}")
        if dev_ppl < best:
            best, best_state = dev_ppl, copy.deepcopy(lm.state_dict())
    lm.load_state_dict(best_state)
    out = save_lm_dir(tc.out_dir, lm.eval(), cfg, tokenizer)
    print(f"best dev perplexity {best:.2f}; language model written to {out}")
    return out


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
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError(f"config key '{key}': '{path}' holds no text")
    return texts


def encode_texts(texts: list[str], tokenizer) -> list[list[int]]:
    """Each sentence as [bos] + tokens + [eos]."""
    return [[tokenizer.bos_id] + tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]


def run_epoch(lm: RNNLM, seqs: list[list[int]], pad: int, batch_size: int, device,
              optim: torch.optim.Optimizer | None = None, grad_clip: float = 0.0,
              seed: int = 0) -> float:
    """One pass (training when ``optim`` is given, else evaluation); returns perplexity."""
    order = list(range(len(seqs)))
    if optim is not None:
        random.Random(seed).shuffle(order)
    lm.train(optim is not None)
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[start:start + batch_size]]
        with torch.set_grad_enabled(optim is not None):
            nll, n = _batch_nll(lm, batch, pad, device)
        if optim is not None:
            optim.zero_grad()
            (nll / n).backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(lm.parameters(), grad_clip)
            optim.step()
        total, count = total + float(nll.detach()), count + n
    return math.exp(total / max(count, 1))


def _batch_nll(lm: RNNLM, batch: list[list[int]], pad: int, device) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL of a batch of [bos] y [eos] sequences, and the token count."""
    lens = torch.tensor([len(s) - 1 for s in batch])
    width = int(lens.max())
    inputs = torch.full((len(batch), width), pad, dtype=torch.long)
    targets = torch.full((len(batch), width), pad, dtype=torch.long)
    for i, s in enumerate(batch):
        inputs[i, : len(s) - 1] = torch.tensor(s[:-1])
        targets[i, : len(s) - 1] = torch.tensor(s[1:])
    logits = lm(inputs.to(device), lens.to(device))
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                            targets.to(device).flatten(), ignore_index=pad,
                                            reduction="sum")
    return nll, int(lens.sum())


def _asr_tokenizer(model_dir: str):
    from earshot.tokenizer import load_tokenizer

    tok_dir = Path(model_dir) / "tokenizer"
    if not model_dir or not tok_dir.is_dir():
        raise ConfigError(f"config key 'train.asr_model': '{model_dir}' has no tokenizer/ "
                          "directory (give the trained ASR model directory)")
    return load_tokenizer(tok_dir)


def _split_dev(train, dev, seed):
    """Without a dev text, hold out 5% of the training sentences (at least one)."""
    if dev:
        return train, dev
    if len(train) < 2:
        raise ConfigError("config key 'train.dev_text': needed when train_text has one sentence")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, len(train) // 20)
    return [train[i] for i in order[n_dev:]], [train[i] for i in order[:n_dev]]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
