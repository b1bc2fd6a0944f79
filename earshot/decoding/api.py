"""decode_batch: audio batch -> n-best hypotheses, by a decoding mode chosen from a table.

Modes: "greedy" (attention argmax), "beam" / "joint" (batched beam search over the
attention decoder, CTC prefix scores, LM, length and coverage scorers, weighted by the
DecodeConfig), "ctc_greedy", "ctc_beam" (frame-synchronous CTC prefix beam search),
"rescore" (CTC n-best rescored by the attention decoder), and "auto": greedy when
beam_size is 1 and no CTC, LM, length or coverage weight is set, else "beam".

>>> hyps = decode_batch(model, wavs, wav_lens, DecodeConfig(beam_size=10, ctc_weight=0.4),
...                     tokenizer)                             # doctest: +SKIP
>>> hyps[0][0].text, hyps[0][0].scores                         # doctest: +SKIP
('yes', {'attention': -0.41, 'ctc': -0.12})
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from earshot.config import DecodeConfig
from earshot.decoding import scorers as sc
from earshot.decoding.beam_search import Hypothesis, WeightedScorer, beam_search, length_limits
from earshot.decoding.ctc_beam import attention_rescore, ctc_greedy, ctc_prefix_beam_search
from earshot.decoding.greedy import greedy_attention
from earshot.errors import ConfigError

__all__ = ["Hypothesis", "decode_batch", "decode_encoded", "joint_scorers", "MODES"]


@dataclass
class Encoded:
    """What every mode decodes from: encoder output and the model's special ids."""

    h: torch.Tensor  # (B, T', H)
    h_lens: torch.Tensor  # (B,), all >= 1
    model: object
    blank: int
    bos: int
    eos: int
    pad: int


@torch.no_grad()
def decode_batch(model, wavs: torch.Tensor, wav_lens: torch.Tensor, cfg: DecodeConfig,
                 tokenizer, lm=None, mode: str = "auto") -> list[list[Hypothesis]]:
    """wavs (B, S), wav_lens (B,) -> per utterance its n-best list (best first), with
    text filled by ``tokenizer.decode``. An utterance too short to give one encoder
    frame gets one empty hypothesis."""
    h, h_lens = model.encode(wavs, wav_lens)
    return decode_encoded(model, h, h_lens, cfg, tokenizer, lm, mode)


def decode_encoded(model, h: torch.Tensor, h_lens: torch.Tensor, cfg: DecodeConfig,
                   tokenizer, lm=None, mode: str = "auto") -> list[list[Hypothesis]]:
    """Decode encoder output h (B, T', H), h_lens (B,) with ``mode``."""
    if mode not in MODES:
        raise ConfigError(f"decoding mode '{mode}': not one of {sorted(MODES)}")
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, {})] for _ in range(h.shape[0])]
    keep = (h_lens > 0).nonzero(as_tuple=True)[0]
    if len(keep):
        enc = Encoded(h.index_select(0, keep), h_lens.index_select(0, keep), model,
                      tokenizer.blank_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        for i, hyps in zip(keep.tolist(), MODES[mode](enc, cfg, lm)):
            results[i] = hyps
    for hyps in results:
        for hyp in hyps:
            hyp.text = tokenizer.decode(hyp.tokens)
    return results


def joint_scorers(enc: Encoded, cfg: DecodeConfig, lm=None) -> list[WeightedScorer]:
    """The weighted scorers of (1 - lambda) att + lambda CTC + beta LM + gamma |Y| (+ coverage)."""
    decoder = enc.model.decoder
    memory = decoder.memory(enc.h, enc.h_lens)
    att_weight = 1.0 - cfg.ctc_weight
    scorers = [
        WeightedScorer("attention", sc.DecoderScorer(decoder, memory, cfg.temperature), att_weight),
        WeightedScorer("ctc", sc.CTCPrefixScorer(enc.model.ctc(enc.h), enc.h_lens, enc.blank,
                                                 enc.eos, cfg.ctc_window, (enc.bos, enc.pad)),
                       cfg.ctc_weight),
        WeightedScorer("length", sc.LengthBonus(), cfg.length_bonus),
    ]
    if lm is not None:
        scorers.append(WeightedScorer("lm", sc.LMScorer(lm, enc.h.device), cfg.lm_weight))
    if att_weight > 0:  # these read the decoder's attention
        scorers.append(WeightedScorer("coverage", sc.CoverageScorer(), cfg.coverage_weight))
        if cfg.max_attn_shift > 0:
            scorers.append(WeightedScorer("attn_shift", sc.AttentionShiftLimit(cfg.max_attn_shift),
                                          1.0))
    return scorers


def _beam(enc: Encoded, cfg: DecodeConfig, lm) -> list[list[Hypothesis]]:
    min_lens, max_lens = length_limits(enc.h_lens, cfg)
    vocab = enc.model.decoder.vocab_size
    return beam_search(joint_scorers(enc, cfg, lm), vocab, min_lens, max_lens, enc.bos,
                       enc.eos, cfg)


def _greedy(enc: Encoded, cfg: DecodeConfig, lm) -> list[list[Hypothesis]]:
    decoder = enc.model.decoder
    min_lens, _ = length_limits(enc.h_lens, cfg)
    tokens = greedy_attention(decoder, decoder.memory(enc.h, enc.h_lens), enc.bos, enc.eos,
                              cfg.max_len_ratio, min_len=min_lens)
    return [[Hypothesis(t, 0.0, {})] for t in tokens]


def _ctc_greedy(enc: Encoded, cfg: DecodeConfig, lm) -> list[list[Hypothesis]]:
    return ctc_greedy(enc.model.ctc(enc.h), enc.h_lens, enc.blank)


def _ctc_beam(enc: Encoded, cfg: DecodeConfig, lm) -> list[list[Hypothesis]]:
    return ctc_prefix_beam_search(enc.model.ctc(enc.h), enc.h_lens, enc.blank,
                                  cfg.beam_size, cfg.nbest, (enc.bos, enc.eos, enc.pad))


def _rescore(enc: Encoded, cfg: DecodeConfig, lm) -> list[list[Hypothesis]]:
    nbest = ctc_prefix_beam_search(enc.model.ctc(enc.h), enc.h_lens, enc.blank, cfg.beam_size,
                                   exclude=(enc.bos, enc.eos, enc.pad))
    decoder = enc.model.decoder
    ranked = attention_rescore(decoder, decoder.memory(enc.h, enc.h_lens), nbest, enc.bos,
                               enc.eos, enc.pad, cfg.ctc_weight, cfg.length_bonus)
    return [hyps[: cfg.nbest] for hyps in ranked]


def _auto(enc: Encoded, cfg: DecodeConfig, lm) -> list[list[Hypothesis]]:
    plain = (cfg.beam_size == 1 and cfg.ctc_weight == 0 and (lm is None or cfg.lm_weight == 0)
             and cfg.length_bonus == 0 and cfg.coverage_weight == 0 and cfg.temperature == 1.0
             and cfg.max_attn_shift == 0)
    return (_greedy if plain else _beam)(enc, cfg, lm)


MODES = {
    "auto": _auto,
    "greedy": _greedy,
    "beam": _beam,
    "joint": _beam,
    "ctc_greedy": _ctc_greedy,
    "ctc_beam": _ctc_beam,
    "rescore": _rescore,
}
