"""Greedy decoding: CTC best path, attention greedy stopping rules and batch invariance."""

from __future__ import annotations

import math

import torch

from earshot.config import AttentionConfig, DecoderConfig
from earshot.decoding.greedy import greedy_attention, greedy_ctc
from earshot.masks import lengths_to_mask
from earshot.models.decoder import AttentionalDecoder

V, ENC, BOS, EOS = 9, 8, 1, 2


def one_hot_log_probs(paths: list[list[int]]) -> torch.Tensor:
    t = max(map(len, paths))
    scores = torch.zeros(len(paths), t, V)
    for i, path in enumerate(paths):
        for j, tok in enumerate(path):
            scores[i, j, tok] = 10.0
    return torch.log_softmax(scores, -1)


def test_greedy_ctc_collapses_repeats_drops_blanks_and_respects_lengths():
    lp = one_hot_log_probs([[0, 3, 3, 0, 3, 4, 4, 0], [5, 5, 6, 0, 7, 7, 7, 8]])
    assert greedy_ctc(lp, torch.tensor([8, 4]), blank_id=0) == [[3, 3, 4], [5, 6]]
    assert greedy_ctc(lp, torch.tensor([0, 8]), blank_id=0) == [[], [5, 6, 7, 8]]


def make(seed=0, attention="location", rnn_type="gru"):
    torch.manual_seed(seed)
    att = AttentionConfig(type=attention, dim=8, location_channels=3, location_kernel=5)
    cfg = DecoderConfig(rnn_type=rnn_type, units=12, embedding_dim=6, dropout=0.2, attention=att)
    dec = AttentionalDecoder(cfg, V, ENC, bos_id=BOS).eval()
    lens = torch.tensor([9, 4, 6])
    enc = 3 * torch.randn(3, 9, ENC) * lengths_to_mask(lens).unsqueeze(-1)
    return dec, enc, lens


def manual_greedy(dec, enc, lens, max_len):
    """One utterance, plain Python loop: the reference for the batched version."""
    memory = dec.memory(enc, lens)
    state, tok, out = dec.init_state(memory), torch.tensor([BOS]), []
    for _ in range(max_len):
        lp, state = dec.step(tok, state, memory)
        tok = lp.argmax(-1)
        if tok.item() == EOS:
            break
        out.append(tok.item())
    return out


def test_greedy_attention_is_batch_invariant_and_matches_a_plain_loop():
    for attention, rnn_type in [("location", "gru"), ("content", "lstm")]:
        dec, enc, lens = make(attention=attention, rnn_type=rnn_type)
        with torch.no_grad():
            dec.output.bias[EOS] = 2.0  # make eos plausible so rows stop at different steps
        batched = greedy_attention(dec, dec.memory(enc, lens), BOS, EOS, max_len_ratio=1.5)
        for i in range(3):
            e = enc[i:i + 1, : lens[i]]
            alone = greedy_attention(dec, dec.memory(e, lens[i:i + 1]), BOS, EOS, 1.5)
            assert alone[0] == batched[i]
            assert batched[i] == manual_greedy(dec, e, lens[i:i + 1], math.ceil(1.5 * lens[i]))


def test_greedy_attention_max_length_is_per_utterance():
    dec, enc, lens = make()
    with torch.no_grad():
        dec.output.bias[EOS] = -1e4  # never stop early
    hyps = greedy_attention(dec, dec.memory(enc, lens), BOS, EOS, max_len_ratio=0.5)
    assert [len(h) for h in hyps] == [5, 2, 3]  # ceil(0.5 * [9, 4, 6])
    assert all(EOS not in h for h in hyps)


def test_greedy_attention_stops_at_eos_and_honours_min_len():
    dec, enc, lens = make()
    with torch.no_grad():
        dec.output.bias[EOS] = 1e4  # eos always wins when allowed
    memory = dec.memory(enc, lens)
    assert greedy_attention(dec, memory, BOS, EOS, 2.0) == [[], [], []]
    hyps = greedy_attention(dec, memory, BOS, EOS, 2.0, min_len=3)
    assert [len(h) for h in hyps] == [3, 3, 3]
    hyps = greedy_attention(dec, memory, BOS, EOS, 2.0, min_len=torch.tensor([1, 0, 2]))
    assert [len(h) for h in hyps] == [1, 0, 2]
