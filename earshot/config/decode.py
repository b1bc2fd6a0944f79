"""``decode``: the settings of every decoding mode (``earshot.choices.DECODE_MODES``)."""

from __future__ import annotations

from dataclasses import dataclass

from earshot.config.core import dotted, require

# No encoder emits 10 tokens a frame; a larger bound only lets a search that never meets
# eos run for hours.
MAX_LEN_RATIO = 10.0
# Wider beams stop paying long before this; the bound keeps a typo from running for hours.
MAX_BEAM = 200
MAX_BATCH = 4096


@dataclass(frozen=True)
class DecodeConfig:
    max_len_ratio: float = 1.0  # max output tokens = ratio * encoder frames
    min_len_ratio: float = 0.0
    beam_size: int = 1
    ctc_weight: float = 0.0  # lambda
    lm_weight: float = 0.0  # beta
    length_bonus: float = 0.0  # gamma
    length_normalize: bool = False
    eos_threshold: float = 1.5  # eos only if its log-score >= this factor x the best one; <= 0 off
    max_attn_shift: int = 0  # 0 disables
    coverage_weight: float = 0.0
    temperature: float = 1.0
    nbest: int = 1
    ctc_window: int = 0  # 0 = full utterance; else frames around the attention peak
    pre_beam: int = 0  # CTC-scored candidates per hypothesis (best by decoder+LM); 0 = whole vocabulary
    batch_size: int = 16

    def check(self, key: str) -> None:
        require(1 <= self.beam_size <= MAX_BEAM, dotted(key, "beam_size"),
                f"must be in [1, {MAX_BEAM}]")
        require(1 <= self.batch_size <= MAX_BATCH, dotted(key, "batch_size"),
                f"must be in [1, {MAX_BATCH}]")
        require(0 < self.max_len_ratio <= MAX_LEN_RATIO, dotted(key, "max_len_ratio"),
                f"must be in (0, {MAX_LEN_RATIO:g}] (output tokens per encoder frame)")
        require(0 <= self.min_len_ratio <= self.max_len_ratio, dotted(key, "min_len_ratio"),
                "must be in [0, max_len_ratio]")
        require(self.lm_weight >= 0, dotted(key, "lm_weight"), "must be >= 0")
        require(self.coverage_weight >= 0, dotted(key, "coverage_weight"), "must be >= 0")
        for name in ("max_attn_shift", "ctc_window", "pre_beam"):
            require(getattr(self, name) >= 0, dotted(key, name), "must be >= 0 (0: off)")
        require(0.0 <= self.ctc_weight <= 1.0, dotted(key, "ctc_weight"), "must be in [0, 1]")
        require(self.temperature > 0, dotted(key, "temperature"), "must be positive")
        require(1 <= self.nbest <= MAX_BEAM, dotted(key, "nbest"), f"must be in [1, {MAX_BEAM}]")
