"""RNN language model over the ASR tokenizer's ids, for shallow fusion in beam search.

Same state-passing shape as the attentional decoder: ``init_state`` / ``step`` /
``select_state``; ``forward`` runs teacher-forced for training. An LM directory holds
config.yaml (LMExperimentConfig), tokenizer/ and model.safetensors, nothing executable
(``earshot.models.artifacts.save_lm_dir`` / ``load_lm``).

>>> import torch
>>> lm = RNNLM(LMConfig(embedding_dim=8, units=16, layers=1), vocab_size=12)
>>> log_probs, state = lm.step(torch.tensor([1, 1]), lm.init_state(2, torch.device("cpu")))
>>> log_probs.shape
torch.Size([2, 12])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from earshot.config import LMConfig
from earshot.models.dropout import Dropout


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
