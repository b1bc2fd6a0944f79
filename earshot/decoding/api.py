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
from typing import TYPE_CHECKING

import torch

from earshot.choices import DECODE_MODES
from earshot.config import DecodeConfig
from earshot.decoding import scorers as sc
from earshot.decoding.beam_search import Hypothesis, WeightedScorer, beam_search, length_limits
from earshot.decoding.ctc_beam import attention_rescore, ctc_greedy, ctc_prefix_beam_search
from earshot.decoding.greedy import greedy_attention
from earshot.models.asr import Encoded

if TYPE_CHECKING:
    from earshot.models.asr import EncoderDecoderASR
    from earshot.models.lm import RNNLM
    from earshot.tokenizer import Tokenizer

__all__ = ["Hypothesis", "decode_batch", "decode_encoded", "joint_scorers"]


@dataclass
class Search:
    """What every mode decodes from: the model (its step interface), the encoded batch
    and the special ids."""

    model: EncoderDecoderASR
    enc: Encoded
    blank: int
    bos: int
    eos: int
    pad: int


@torch.inference_mode()
def decode_batch(model: EncoderDecoderASR, wavs: torch.Tensor, wav_lens: torch.Tensor,
                 cfg: DecodeConfig, tokenizer: Tokenizer, lm: RNNLM | None = None,
                 mode: str = "auto") -> list[list[Hypothesis]]:
    """wavs (B, S), wav_lens (B,) -> per utterance its n-best list (best first), with
    text filled by ``tokenizer.decode``. An utterance too short to give one encoder
    frame gets one empty hypothesis."""
    return decode_encoded(model, model.encode(wavs, wav_lens), cfg, tokenizer, lm, mode)


def decode_encoded(model: EncoderDecoderASR, enc: Encoded, cfg: DecodeConfig,
                   tokenizer: Tokenizer, lm: RNNLM | None = None, mode: str = "auto") -> list[list[Hypothesis]]:
    """Decode an encoded batch (``model.encode``) with ``mode``."""
    search_fn = DECODE_MODES.load(mode, "option --mode")
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, {})] for _ in range(len(enc))]
    keep = (enc.lens > 0).nonzero(as_tuple=True)[0]
    if len(keep):
        search = Search(model, enc if len(keep) == len(enc) else enc.select(keep),
                         tokenizer.blank_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        for i, hyps in zip(keep.tolist(), search_fn(search, cfg, lm)):
            results[i] = hyps
    for hyps in results:
        for hyp in hyps:
            hyp.text = tokenizer.decode(hyp.tokens)
    return results


def joint_scorers(search: Search, cfg: DecodeConfig, lm: RNNLM | None = None) -> list[WeightedScorer]:
    """The weighted scorers of (1 - lambda) att + lambda CTC + beta LM + gamma |Y| (+ coverage)."""
    enc = search.enc
    att_weight = 1.0 - cfg.ctc_weight
    scorers = [
        WeightedScorer("attention", sc.DecoderScorer(search.model, enc.memory, cfg.temperature),
                       att_weight),
        WeightedScorer("ctc", sc.CTCPrefixScorer(enc.ctc_log_probs, enc.lens, search.blank,
                                                 search.eos, cfg.ctc_window,
                                                 (search.bos, search.pad)),
                       cfg.ctc_weight),
        WeightedScorer("length", sc.LengthBonus(), cfg.length_bonus),
    ]
    if lm is not None:
        scorers.append(WeightedScorer("lm", sc.LMScorer(lm, enc.lens.device), cfg.lm_weight))
    if att_weight > 0:  # these read the decoder's attention
        scorers.append(WeightedScorer("coverage", sc.CoverageScorer(), cfg.coverage_weight))
        if cfg.max_attn_shift > 0:
            scorers.append(WeightedScorer("attn_shift", sc.AttentionShiftLimit(cfg.max_attn_shift),
                                          1.0))
    return scorers


def beam(search: Search, cfg: DecodeConfig, lm: RNNLM | None) -> list[list[Hypothesis]]:
    min_lens, max_lens = length_limits(search.enc.lens, cfg)
    return beam_search(joint_scorers(search, cfg, lm), search.model.vocab_size, min_lens,
                       max_lens, search.bos, search.eos, cfg,
                       graphs=getattr(search.model, "search_graphs", None))


def greedy(search: Search, cfg: DecodeConfig, lm: RNNLM | None) -> list[list[Hypothesis]]:
    min_lens, _ = length_limits(search.enc.lens, cfg)
    scores = torch.zeros(len(search.enc), device=search.enc.lens.device)
    tokens = greedy_attention(search.model, search.enc.memory, search.bos, search.eos,
                              cfg.max_len_ratio, min_len=min_lens, scores=scores)
    return [[Hypothesis(t, s, {"attention": s})] for t, s in zip(tokens, scores.tolist())]


def ctc_greedy_mode(search: Search, cfg: DecodeConfig, lm: RNNLM | None) -> list[list[Hypothesis]]:
    return ctc_greedy(search.enc.ctc_log_probs, search.enc.lens, search.blank)


def ctc_beam(search: Search, cfg: DecodeConfig, lm: RNNLM | None) -> list[list[Hypothesis]]:
    return ctc_prefix_beam_search(search.enc.ctc_log_probs, search.enc.lens, search.blank,
                                  cfg.beam_size, cfg.nbest, (search.bos, search.eos, search.pad))


def rescore(search: Search, cfg: DecodeConfig, lm: RNNLM | None) -> list[list[Hypothesis]]:
    nbest = ctc_prefix_beam_search(search.enc.ctc_log_probs, search.enc.lens, search.blank,
                                   cfg.beam_size, exclude=(search.bos, search.eos, search.pad))
    ranked = attention_rescore(search.model, search.enc.memory, nbest, search.bos, search.eos,
                               search.pad, cfg.ctc_weight, cfg.length_bonus)
    return [hyps[: cfg.nbest] for hyps in ranked]


def auto(search: Search, cfg: DecodeConfig, lm: RNNLM | None) -> list[list[Hypothesis]]:
    plain = (cfg.beam_size == 1 and cfg.ctc_weight == 0 and (lm is None or cfg.lm_weight == 0)
             and cfg.length_bonus == 0 and cfg.coverage_weight == 0 and cfg.temperature == 1.0
             and cfg.max_attn_shift == 0)
    return (greedy if plain else beam)(search, cfg, lm)

