"""Attentional RNN decoder: one step cell shared by teacher-forced training and search.

Per step: embed the previous token, run the GRU/LSTM cell stack on
[embedding; previous context], attend with the top hidden state as query, and map
[hidden; context] to logits. All state is a ``DecoderState`` value passed in and
returned; the encoder side is a ``Memory`` computed once per batch.

>>> import torch
>>> from earshot.config import DecoderConfig
>>> dec = AttentionalDecoder(DecoderConfig(units=16, embedding_dim=8), vocab_size=10,
...                          enc_dim=12, bos_id=1).eval()
>>> memory = dec.memory(torch.randn(2, 5, 12), torch.tensor([5, 3]))
>>> state = dec.init_state(memory)
>>> log_probs, state = dec.step(torch.tensor([1, 1]), state, memory)
>>> log_probs.shape, state.attn.shape
(torch.Size([2, 10]), torch.Size([2, 5]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from earshot.config import DecoderConfig
from earshot.masks import lengths_to_mask
from earshot.models.dropout import Dropout
from earshot.choices import ATTENTIONS


@dataclass
class Memory:
    """What the decoder attends to. enc (N, T', H), enc_lens (N,), mask (N, T'), keys (N, T', A)."""

    enc: torch.Tensor
    enc_lens: torch.Tensor
    mask: torch.Tensor
    keys: torch.Tensor


@dataclass
class DecoderState:
    """Recurrent state: hidden (L, N, U); cell (L, N, U) for LSTM, else None;
    context (N, H); attn (N, T') the last attention weights."""

    hidden: torch.Tensor
    cell: torch.Tensor | None
    context: torch.Tensor
    attn: torch.Tensor  # multi-head attention: (N, heads, T')


_CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}


class AttentionalDecoder(nn.Module):
    """GRU/LSTM decoder with content, location-aware or multi-head location-aware
    attention over the encoder output."""

    # Tensors whose first dimension is indexed by token id.
    TOKEN_INDEXED = ("embedding.weight", "output.weight", "output.bias")

    def __init__(self, cfg: DecoderConfig, vocab_size: int, enc_dim: int, bos_id: int):
        super().__init__()
        self.rnn_type = cfg.rnn_type
        self.bos_id = bos_id
        self.vocab_size = vocab_size
        self.enc_dim = enc_dim
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim)
        sizes = [cfg.embedding_dim + enc_dim] + [cfg.units] * (cfg.layers - 1)
        self.cells = nn.ModuleList(_CELLS[cfg.rnn_type](size, cfg.units) for size in sizes)
        self.attention = ATTENTIONS.load(cfg.attention.type)(cfg.attention, enc_dim, cfg.units)
        self.dropout = Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.units + enc_dim, vocab_size)

    # -- encoder side -------------------------------------------------------------

    def memory(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> Memory:
        """Bundle encoder output (N, T', H) and lengths (N,) with the mask and attention keys."""
        mask = lengths_to_mask(enc_lens, enc.size(1))
        return Memory(enc, enc_lens, mask, self.attention.precompute(enc))

    @staticmethod
    def select_memory(memory: Memory, index: torch.Tensor) -> Memory:
        """Rows ``index`` (N',) of the memory, e.g. to drop finished utterances from a beam."""
        return Memory(*(x.index_select(0, index)
                        for x in (memory.enc, memory.enc_lens, memory.mask, memory.keys)))

    @classmethod
    def repeat_memory(cls, memory: Memory, k: int) -> Memory:
        """Repeat every row k times (rows b*k .. b*k+k-1 come from row b), e.g. for a beam."""
        rows = torch.arange(memory.enc.size(0), device=memory.enc.device).repeat_interleave(k)
        return cls.select_memory(memory, rows)

    # -- state --------------------------------------------------------------------

    def init_state(self, memory: Memory) -> DecoderState:
        """Zero recurrent state, zero context, and the attention's initial weights."""
        n = memory.enc.size(0)
        zeros = memory.enc.new_zeros(len(self.cells), n, self.cells[0].hidden_size)
        cell = zeros.clone() if self.rnn_type == "lstm" else None
        context = memory.enc.new_zeros(n, self.enc_dim)
        attn = self.attention.init_state(memory.enc, memory.enc_lens)
        return DecoderState(zeros, cell, context, attn)

    @staticmethod
    def select_state(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Keep/reorder rows: the new row i is old row index[i]. index (N',)."""
        cell = None if state.cell is None else state.cell.index_select(1, index)
        return DecoderState(
            state.hidden.index_select(1, index),
            cell,
            state.context.index_select(0, index),
            state.attn.index_select(0, index),
        )

    def alignment(self, state: DecoderState) -> torch.Tensor:
        """The last attention weights over frames (N, T') (the mean of the heads for
        multi-head attention)."""
        return self.attention.alignment(state.attn)

    # -- one step -----------------------------------------------------------------

    def step(
        self, tokens: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState]:
        """Feed previous tokens (N,) -> (log_probs (N, V) in float32, new state)."""
        out, state = self._advance(self.embedding(tokens), state, memory)
        return torch.log_softmax(self.output(out).float(), dim=-1), state

    def _advance(
        self, emb: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState]:
        """The shared cell: emb (N, E) -> (output features (N, U + H), new state)."""
        x = torch.cat([emb, state.context], dim=-1)
        hiddens, cells = [], []
        for i, rnn in enumerate(self.cells):
            if i > 0:
                x = self.dropout(x)
            if state.cell is None:
                h = rnn(x, state.hidden[i])
            else:
                h, c = rnn(x, (state.hidden[i], state.cell[i]))
                cells.append(c)
            hiddens.append(h)
            x = h
        context, attn = self.attention(h, memory.enc, memory.keys, memory.mask, state.attn)
        cell = torch.stack(cells) if cells else None
        new = DecoderState(torch.stack(hiddens), cell, context, attn)
        return torch.cat([self.dropout(h), context], dim=-1), new

    # -- training -----------------------------------------------------------------

    def forward(
        self, memory: Memory, tokens_in: torch.Tensor, sampling_prob: float = 0.0
    ) -> torch.Tensor:
        """Teacher-forced logits (B, U, V) for tokens_in (B, U) starting with bos.

        With ``sampling_prob`` > 0 (scheduled sampling), each (row, step) after the
        first takes, with that probability, the argmax of the previous step's
        prediction as input instead of the reference token.
        """
        if sampling_prob > 0:
            return self._forward_sampled(memory, tokens_in, sampling_prob)
        emb = self.embedding(tokens_in)
        state = self.init_state(memory)
        outs = []
        for t in range(tokens_in.size(1)):
            out, state = self._advance(emb[:, t], state, memory)
            outs.append(out)
        return self.output(torch.stack(outs, dim=1))

    def _forward_sampled(
        self, memory: Memory, tokens_in: torch.Tensor, prob: float
    ) -> torch.Tensor:
        state = self.init_state(memory)
        tokens = tokens_in[:, 0]
        logits = []
        for t in range(tokens_in.size(1)):
            if t > 0:
                predicted = logits[-1].detach().argmax(dim=-1)
                use_pred = torch.rand(tokens.shape, device=tokens.device) < prob
                tokens = torch.where(use_pred, predicted, tokens_in[:, t])
            out, state = self._advance(self.embedding(tokens), state, memory)
            logits.append(self.output(out))
        return torch.stack(logits, dim=1)
