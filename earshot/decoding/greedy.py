"""Greedy decoding: attention decoder (batched, one step per token) and CTC best path.

>>> import torch
>>> lp = torch.log_softmax(torch.tensor([[[0., 5, 0], [0, 5, 0], [5, 0, 0], [0, 0, 5]]]), -1)
>>> greedy_ctc(lp, torch.tensor([4]), blank_id=0)
[[1, 2]]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from earshot.masks import lengths_to_mask

if TYPE_CHECKING:
    from earshot.decoding.scorers import StepDecoder
    from earshot.models.decoder import Memory


@torch.no_grad()
def greedy_attention(
    decoder: StepDecoder,
    memory: Memory,
    bos_id: int,
    eos_id: int,
    max_len_ratio: float,
    min_len: int | torch.Tensor = 0,
    scores: torch.Tensor | None = None,
) -> list[list[int]]:
    """Argmax decoding of all N rows of ``memory`` together; eos excluded from the output.

    A row stops at eos or after ceil(max_len_ratio * enc_len) tokens (at least 1);
    eos is forbidden before ``min_len`` tokens (int or (N,) tensor). Finished rows
    leave the batch, so later steps cost nothing for them. ``scores`` (N,), when given,
    receives each row's summed log-probability (its eos step included).
    """
    enc_lens = memory.enc_lens
    n, device = enc_lens.size(0), enc_lens.device
    max_lens = torch.ceil(enc_lens.double() * max_len_ratio).long().clamp(min=1)
    min_lens = torch.as_tensor(min_len, device=device).expand(n)
    out = torch.full((n, int(max_lens.max())), eos_id, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # rows still decoding
    row_max = max_lens  # their length limits
    tokens = torch.full((n,), bos_id, dtype=torch.long, device=device)
    state = decoder.init_state(memory)
    eos_banned = int(min_lens.max()) if n else 0  # steps in which some row may not end
    for t in range(out.size(1)):
        log_probs, state = decoder.step(tokens, state, memory)
        if t < eos_banned:
            log_probs[:, eos_id] = log_probs[:, eos_id].masked_fill(min_lens[rows] > t, -math.inf)
        tokens = log_probs.argmax(dim=-1)
        if scores is not None:
            scores.index_add_(0, rows, log_probs.gather(1, tokens[:, None]).squeeze(1).float())
        out[rows, t] = tokens
        done = tokens.eq(eos_id) | (row_max <= t + 1)
        finished = int(done.sum())  # one host sync a step
        if finished == done.numel():
            break
        if finished:
            keep = (~done).nonzero(as_tuple=True)[0]
            rows, row_max, tokens = rows[keep], row_max[keep], tokens[keep]
            state = decoder.select_state(state, keep)
            memory = decoder.select_memory(memory, keep)
    return _strip_eos(out, eos_id, max_lens)


def _strip_eos(hyps: torch.Tensor, eos_id: int, max_lens: torch.Tensor) -> list[list[int]]:
    """Cut each row (N, L) at its first eos or its max length."""
    result = []
    for row, limit in zip(hyps.tolist(), max_lens.tolist()):
        row = row[:limit]
        result.append(row[: row.index(eos_id)] if eos_id in row else row)
    return result


def greedy_ctc(log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int) -> list[list[int]]:
    """Best path: argmax per frame, collapse repeats, drop blanks.

    log_probs (N, T', V), lens (N,) -> token ids per row.
    """
    best = log_probs.argmax(dim=-1)  # (N, T')
    prev = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    keep = best.ne(blank_id) & best.ne(prev) & lengths_to_mask(lens, best.size(1))
    return [row[mask].tolist() for row, mask in zip(best, keep)]
