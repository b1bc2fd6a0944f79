"""``model``: the recogniser's parts (front end, encoder, decoder, SpecAugment), the
tokenizer, and what a model directory's ``config.yaml`` holds (``ModelDescription``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from earshot.choices import ATTENTIONS, ENCODERS, FRONTENDS
from earshot.config.core import MAX_LAYERS, TaggedConfig, dotted, require, require_size
from earshot.config.decode import DecodeConfig


@dataclass(frozen=True)
class FeatureConfig:
    """``model.features``: the front end (``earshot.choices.FRONTENDS[kind]``) and its settings."""

    kind: Literal[FRONTENDS.names] = "fbank"  # waveform: samples as they are
    sample_rate: int = 16000  # audio is resampled to this rate on load
    num_mel_bins: int = 80  # 80 by default; 40 is the other common choice
    num_ceps: int = 13  # MFCC only
    deltas: bool = False  # append first and second order deltas
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means offset from Nyquist, as in Kaldi
    dither: float = 0.0  # Kaldi's default is 1.0; 0 keeps features deterministic
    utterance_cmn: bool = False  # subtract each utterance's mean (channel/gain) before global CMVN
    waveform_norm: Literal["utterance", "none"] = "utterance"  # waveform only: zero mean, unit variance

    def check(self, key: str) -> None:
        require(self.sample_rate >= 1000, dotted(key, "sample_rate"), "must be >= 1000 (Hz)")
        if self.kind == "waveform":
            return
        require(self.num_mel_bins >= 1, dotted(key, "num_mel_bins"), "must be >= 1")
        require(self.frame_length_ms <= 200, dotted(key, "frame_length_ms"),
                "must be at most 200 ms (speech frames are 20-50 ms)")
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        require(0.0 <= self.low_freq < high <= nyquist, dotted(key, "low_freq"),
                f"need 0 <= low_freq < high_freq <= {nyquist:g} (Nyquist), got "
                f"{self.low_freq:g} and {high:g}")
        empty = empty_mel_filters(self)
        require(not empty, dotted(key, "num_mel_bins"),
                f"{self.num_mel_bins} mel filters at {self.sample_rate} Hz over "
                f"{self.frame_length_ms:g} ms frames leave {empty} of them without a frequency "
                f"bin; use fewer")
        require(self.kind != "mfcc" or 1 <= self.num_ceps <= self.num_mel_bins,
                dotted(key, "num_ceps"), "must be in [1, num_mel_bins]")
        require(self.frame_length_ms > 0, dotted(key, "frame_length_ms"), "must be positive")
        require(0 < self.frame_shift_ms <= self.frame_length_ms, dotted(key, "frame_shift_ms"),
                "must be positive and at most frame_length_ms")
        require(self.dither >= 0, dotted(key, "dither"), "must be >= 0")


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["char", "sentencepiece"] = "char"
    vocab_size: int = 256  # sentencepiece only
    model_type: Literal["unigram", "bpe"] = "unigram"  # sentencepiece only
    # the text rules, applied to every text, references included (earshot.text.TextRules)
    case: Literal["lower", "upper", "keep"] = "lower"
    punctuation: Literal["keep", "strip"] = "keep"  # strip: apostrophes inside words stay
    numbers: Literal["keep", "words"] = "keep"  # words: digits spelled out in English

    def check(self, key: str) -> None:
        require_size(self.vocab_size, dotted(key, "vocab_size"), 65536, least=2)


class EncoderConfig(TaggedConfig):
    """``model.encoder``: one frozen dataclass per encoder type, declared beside the
    encoder as its ``Config`` (``earshot.choices.ENCODERS`` names them).

    What the rest of the config may rely on about an encoder is declared here, not
    probed: the front end it needs (``FRONTEND``, with the reason), and how many blocks
    intermediate CTC may tap (``tappable_blocks``)."""

    TABLE = ENCODERS
    DEFAULT = "crdnn"
    FRONTEND: ClassVar[str | None] = None  # the only front end kind it takes; None: any
    FRONTEND_REASON: ClassVar[str] = ""

    def tappable_blocks(self) -> int:
        """Blocks (1-based, the top one included) whose outputs can feed the CTC head in
        training (intermediate CTC); 0 when the encoder has no such taps."""
        return 0


@dataclass(frozen=True)
class AttentionConfig:
    type: Literal[ATTENTIONS.names] = "location"
    dim: int = 256  # multihead_location: split evenly over the heads
    heads: int = 4  # multihead_location only
    location_channels: int = 10  # location-aware only
    location_kernel: int = 31  # location-aware only; odd
    scaling: float = 1.0  # sharpening factor applied to the energies before softmax

    def check(self, key: str) -> None:
        require_size(self.dim, dotted(key, "dim"))
        require_size(self.location_channels, dotted(key, "location_channels"), 1024)
        require_size(self.location_kernel, dotted(key, "location_kernel"), 1001)
        require(self.scaling > 0, dotted(key, "scaling"), "must be positive")
        require(self.location_kernel % 2 == 1, dotted(key, "location_kernel"), "must be odd")
        require(self.heads >= 1 and (self.type != "multihead_location" or self.dim % self.heads == 0),
                dotted(key, "heads"), f"must be >= 1 and divide {dotted(key, 'dim')}")


@dataclass(frozen=True)
class DecoderConfig:
    rnn_type: Literal["lstm", "gru"] = "gru"
    layers: int = 1
    units: int = 256
    embedding_dim: int = 128
    dropout: float = 0.15
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def check(self, key: str) -> None:
        require_size(self.layers, dotted(key, "layers"), MAX_LAYERS)
        require_size(self.units, dotted(key, "units"))
        require_size(self.embedding_dim, dotted(key, "embedding_dim"))
        require(0.0 <= self.dropout < 1.0, dotted(key, "dropout"), "must be in [0, 1)")


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Masks applied to normalised features in training only (Park et al., 2019)."""

    freq_masks: int = 0  # 0 disables frequency masking
    freq_width: int = 8  # maximum bins per frequency mask
    time_masks: int = 0  # 0 disables time masking
    time_width: int = 20  # maximum frames per time mask
    max_time_fraction: float = 0.2  # a time mask never covers more of an utterance than this

    def check(self, key: str) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            require(getattr(self, name) >= 0, dotted(key, name), "must be >= 0")
        require(0.0 <= self.max_time_fraction <= 1.0, dotted(key, "max_time_fraction"),
                "must be in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig.default)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def check(self, key: str) -> None:
        need = self.encoder.FRONTEND
        require(need is None or self.features.kind == need, dotted(key, "features.kind"),
                f"must be {need} with {dotted(key, 'encoder.type')}={self.encoder.type} "
                f"(got {self.features.kind}): {self.encoder.FRONTEND_REASON}")


@dataclass(frozen=True)
class ModelCard:
    """What a model directory says about how its model was made."""

    corpus: str = ""  # training corpus name
    train_hours: float = 0.0
    dev_wer: float | None = None  # greedy attention decoding of the exported weights, percent
    dev_cer: float | None = None
    epochs: int = 0  # epochs trained
    exported_epochs: tuple[int, ...] = ()  # the epoch(s) whose (mean) weights were exported
    parameters: int = 0
    longest_utterance: float = 0.0  # seconds; the longest training utterance (0: not recorded)
    ctc_weight: float | None = None  # the training loss's alpha (None: not recorded)


MODEL_DIR_FORMAT = 2


@dataclass(frozen=True)
class ModelDescription:
    """A model directory's ``config.yaml``: the model, not the run that made it (no data
    paths, no optimizer). Format 1 directories (earshot 0.1) held an ExperimentConfig."""

    format: int = MODEL_DIR_FORMAT
    earshot_version: str = ""  # the release that wrote it
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # default decoding settings
    card: ModelCard = field(default_factory=ModelCard)


def empty_mel_filters(cfg: FeatureConfig) -> int:
    """How many of ``cfg``'s mel filters would cover no FFT bin (Kaldi's layout: the frame
    padded to a power of two, filters evenly spaced in mel between the edges)."""
    window = max(1, int(cfg.sample_rate * cfg.frame_length_ms / 1000))
    fft = 1 << (window - 1).bit_length()
    nyquist = cfg.sample_rate / 2
    high = cfg.high_freq if cfg.high_freq > 0 else nyquist + cfg.high_freq
    low = cfg.low_freq
    if not 0 <= low < high <= nyquist:
        return 0  # (the feature extractor names bad edges itself)

    def mel(hz: float) -> float:
        return 1127.0 * math.log(1.0 + hz / 700.0)

    step = (mel(high) - mel(low)) / (cfg.num_mel_bins + 1)
    bins = [mel(k * cfg.sample_rate / fft) for k in range(fft // 2)]
    empty = 0
    for m in range(cfg.num_mel_bins):
        left, right = mel(low) + m * step, mel(low) + (m + 2) * step
        empty += not any(left < b < right for b in bins)
    return empty
