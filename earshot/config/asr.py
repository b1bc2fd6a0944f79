"""``earshot train``: the ASR training config (``ExperimentConfig``) and its own sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from earshot.config.core import dotted, require
from earshot.config.decode import DecodeConfig
from earshot.config.model import ModelConfig, TokenizerConfig
from earshot.config.training import OptimConfig, TrainConfig, check_schedule_fits


@dataclass(frozen=True)
class ScheduledSamplingConfig:
    max_prob: float = 0.0  # 0 disables scheduled sampling (pure teacher forcing)
    unit: Literal["step", "epoch"] = "epoch"
    start: int = 0  # probability is 0 before this step/epoch
    ramp: int = 1  # steps/epochs to ramp linearly from 0 to max_prob

    def check(self, key: str) -> None:
        require(0.0 <= self.max_prob <= 1.0, dotted(key, "max_prob"), "must be in [0, 1]")
        require(self.start >= 0, dotted(key, "start"), "must be >= 0")
        require(self.ramp >= 1, dotted(key, "ramp"), "must be >= 1")


@dataclass(frozen=True)
class LossConfig:
    ctc_weight: float = 0.3  # alpha in L = alpha * CTC + (1 - alpha) * NLL
    label_smoothing: float = 0.1
    scheduled_sampling: ScheduledSamplingConfig = field(default_factory=ScheduledSamplingConfig)
    # Intermediate CTC (Lee & Watanabe, 2021): the outputs of these encoder blocks
    # (1-based, below the top one) also feed the CTC head in training, and the CTC term
    # becomes (1 - w) * CTC(top) + w * mean over the tapped blocks. No new parameters.
    intermediate_ctc_weight: float = 0.0  # w; 0 disables
    intermediate_ctc_layers: tuple[int, ...] = ()  # e.g. (2,) for a 4-block Conformer

    def check(self, key: str) -> None:
        require(0.0 <= self.ctc_weight <= 1.0, dotted(key, "ctc_weight"), "must be in [0, 1]")
        require(0.0 <= self.label_smoothing < 1.0, dotted(key, "label_smoothing"), "must be in [0, 1)")
        weight, layers = self.intermediate_ctc_weight, self.intermediate_ctc_layers
        require(0.0 <= weight < 1.0, dotted(key, "intermediate_ctc_weight"), "must be in [0, 1) (0: off)")
        if weight == 0 and not layers:
            return
        require(bool(layers), dotted(key, "intermediate_ctc_layers"),
                "must name at least one encoder block (e.g. [2]) when loss.intermediate_ctc_weight > 0")
        require(weight > 0, dotted(key, "intermediate_ctc_weight"),
                "is 0, so loss.intermediate_ctc_layers would do nothing; give a weight (e.g. 0.3)")
        require(self.ctc_weight > 0, dotted(key, "ctc_weight"),
                "must be > 0 with intermediate CTC: the tapped blocks feed the CTC head")


@dataclass(frozen=True)
class NoiseConfig:
    """``data.noise``: additive noise on training utterances (earshot.data.corruption)."""

    sources: str = ""  # a folder of audio files, or a manifest (earshot prepare musan: noise.jsonl.gz)
    prob: float = 0.0  # share of training utterances that get noise; 0 disables
    snr_db: tuple[float, float] = (5.0, 20.0)  # signal-to-noise ratio drawn uniformly in this range

    def check(self, key: str) -> None:
        require(0.0 <= self.prob <= 1.0, dotted(key, "prob"), "must be in [0, 1]")
        require(len(self.snr_db) == 2 and self.snr_db[0] <= self.snr_db[1], dotted(key, "snr_db"),
                "must be [low, high] in dB, low <= high")
        require(self.prob == 0 or bool(self.sources), dotted(key, "sources"),
                "needs a folder of noise audio or a manifest when data.noise.prob > 0")


@dataclass(frozen=True)
class ReverbConfig:
    """``data.reverb``: convolution of training utterances with a room impulse response."""

    rirs: str = ""  # a folder of impulse responses (or a manifest of them), or "simulated"
    prob: float = 0.0  # share of training utterances reverberated; 0 disables
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds; simulated responses only

    def check(self, key: str) -> None:
        require(0.0 <= self.prob <= 1.0, dotted(key, "prob"), "must be in [0, 1]")
        require(len(self.rt60) == 2 and 0 < self.rt60[0] <= self.rt60[1] <= 5.0, dotted(key, "rt60"),
                "must be [low, high] seconds with 0 < low <= high <= 5")
        require(self.prob == 0 or bool(self.rirs), dotted(key, "rirs"),
                "needs a folder of impulse responses, a manifest or 'simulated' when "
                "data.reverb.prob > 0")


@dataclass(frozen=True)
class DataConfig:
    corpus: str = ""  # the training corpus's name for the model card; empty: train's folder name
    train: str = ""  # CutSet manifest (jsonl / jsonl.gz)
    dev: str = ""
    test: str = ""
    max_duration: float = 120.0  # seconds of audio per batch
    num_buckets: int = 10
    num_workers: int = 0
    prefetch_factor: int = 2  # batches each loader worker keeps ready
    max_utterance_duration: float = 30.0  # longer cuts are skipped (and counted)
    speed_perturb: tuple[float, ...] = ()  # e.g. (0.9, 1.0, 1.1); empty disables
    # feature statistics (global CMVN) from the first N training utterances; 0: all of them
    cmvn_utterances: int = 20000
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    shuffle_shards: bool = True  # a shard folder's shard order drawn per epoch (training)
    strict: bool = False  # a training file or shard that cannot be read stops the run

    def check(self, key: str) -> None:
        check_batching(self, key)
        require(self.cmvn_utterances >= 0, dotted(key, "cmvn_utterances"), "must be >= 0 (0: all)")
        require(self.prefetch_factor >= 1, dotted(key, "prefetch_factor"), "must be >= 1")
        require(all(0.5 <= f <= 2.0 for f in self.speed_perturb), dotted(key, "speed_perturb"),
                "factors must be in [0.5, 2] (e.g. [0.9, 1.0, 1.1])")


def check_batching(data: DataConfig, key: str) -> None:
    """The batching keys every audio ``data`` section shares."""
    require(data.max_duration > 0, dotted(key, "max_duration"), "must be positive")
    require(data.num_buckets >= 1, dotted(key, "num_buckets"), "must be >= 1")
    require(data.num_workers >= 0, dotted(key, "num_workers"), "must be >= 0")
    require(data.max_utterance_duration > 0, dotted(key, "max_utterance_duration"),
            "must be positive (seconds)")


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def check(self, key: str) -> None:
        check_schedule_fits(self)
        layers = self.loss.intermediate_ctc_layers
        if self.loss.intermediate_ctc_weight > 0:
            top = self.model.encoder.tappable_blocks()
            require(top > 0, "loss.intermediate_ctc_layers",
                    f"taps encoder blocks, which model.encoder.type {self.model.encoder.type} "
                    f"does not offer")
            require(all(1 <= i < top for i in layers) and len(set(layers)) == len(layers),
                    "loss.intermediate_ctc_layers",
                    f"must be distinct blocks in [1, {top - 1}] (model.encoder.layers is {top}; "
                    f"the top block already feeds the CTC head), got {list(layers)}")
