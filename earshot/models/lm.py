"""RNN language model over the ASR tokenizer's ids, for shallow fusion in beam search.

Same state-passing shape as the attentional decoder: ``init_state`` / ``step`` /
``select_state``; ``forward`` runs teacher-forced for training. An LM directory holds
config.yaml (LMExperimentConfig), tokenizer/ and model.safetensors, nothing executable.

>>> import torch
>>> lm = RNNLM(LMConfig(embedding_dim=8, units=16, layers=1), vocab_size=12)
>>> log_probs, state = lm.step(torch.tensor([1, 1]), lm.init_state(2, torch.device("cpu")))
>>> log_probs.shape
torch.Size([2, 12])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from earshot.config import LMConfig, LMExperimentConfig, load_config, save_config
from earshot.errors import ConfigError
from earshot.integrity import verify_checksums
from earshot.models.dropout import Dropout

if TYPE_CHECKING:
    from earshot.tokenizer import Tokenizer


@dataclass
class LMState:
    """LSTM state: hidden, cell (layers, N, units)."""

    hidden: torch.Tensor
    cell: torch.Tensor


class RNNLM(nn.Module):
    """Embedding -> LSTM stack -> linear output over the vocabulary."""

    def __init__(self, cfg: LMConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim)
        self.rnn = nn.LSTM(cfg.embedding_dim, cfg.units, cfg.layers, batch_first=True,
                           dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.units, vocab_size)

    def forward(self, tokens_in: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """tokens_in (B, U) starting with bos, lens (B,) -> logits (B, U, V).

        Positions past a row's length are computed but meaningless (the LSTM runs left
        to right, so padding never changes the valid positions); mask them in the loss.
        """
        del lens
        out, _ = self.rnn(self.dropout(self.embedding(tokens_in)))
        return self.output(self.dropout(out))

    def init_state(self, batch: int, device: torch.device) -> LMState:
        zeros = torch.zeros(self.cfg.layers, batch, self.cfg.units, device=device)
        return LMState(zeros, zeros.clone())

    def step(self, tokens: torch.Tensor, state: LMState) -> tuple[torch.Tensor, LMState]:
        """Previous tokens (N,) -> (log_probs (N, V) float32, new state)."""
        out, (h, c) = self.rnn(self.embedding(tokens).unsqueeze(1), (state.hidden, state.cell))
        return torch.log_softmax(self.output(out[:, 0]).float(), dim=-1), LMState(h, c)

    @staticmethod
    def select_state(state: LMState, index: torch.Tensor) -> LMState:
        """Rows ``index`` (N',) of the state."""
        return LMState(state.hidden.index_select(1, index), state.cell.index_select(1, index))


def save_lm_dir(out_dir: str | Path, lm: RNNLM, cfg: LMExperimentConfig, tokenizer: Tokenizer) -> Path:
    """Write config.yaml, tokenizer/ and model.safetensors to ``out_dir``, atomically (a
    crash leaves the previous directory, or none, never half of one)."""
    from earshot.modeldir import staged_directory

    with staged_directory(out_dir) as staging:
        save_config(cfg, staging / "config.yaml")
        tokenizer.save(staging / "tokenizer")
        weights = {k: v.detach().cpu().contiguous() for k, v in lm.state_dict().items()}
        save_file(weights, str(staging / "model.safetensors"))
    return Path(out_dir)


def load_lm(lm_dir: str | Path, device: str | torch.device = "cpu") -> RNNLM:
    """Rebuild an RNNLM from an LM directory (see save_lm_dir), or from the ``train-lm``
    experiment directory that holds one in ``model/``; ``.tokenizer`` attached."""
    from earshot.tokenizer import load_tokenizer

    d = Path(lm_dir)
    if not (d / "model.safetensors").exists() and (d / "model" / "model.safetensors").exists():
        d = d / "model"  # the train-lm experiment directory: its exported LM
    for name in ("config.yaml", "tokenizer", "model.safetensors"):
        if not (d / name).exists():
            raise ConfigError(f"{d}: not a language model directory (missing {name})")
    verify_checksums(d)
    cfg = load_config(d / "config.yaml", cls=LMExperimentConfig)
    tokenizer = load_tokenizer(d / "tokenizer")
    lm = RNNLM(cfg.model, tokenizer.vocab_size)
    from earshot.modeldir import read_weights

    lm.load_state_dict(read_weights(d / "model.safetensors"))
    lm.tokenizer = tokenizer
    return lm.to(device).eval()
