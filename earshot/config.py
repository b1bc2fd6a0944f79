"""Typed, frozen configuration for every part of earshot, and YAML <-> dataclass.

YAML holds values only; defaults live here. An unknown key or a value of the wrong
type is a ``ConfigError`` that names the dotted key, raised before any work starts.

>>> cfg = load_config(None, ["model.encoder.rnn_layers=3", "train.epochs=2"])
>>> cfg.model.encoder.rnn_layers, cfg.train.epochs
(3, 2)
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from earshot.errors import ConfigError

_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class FeatureConfig:
    """``model.features``: the front end (frontends.FRONTENDS[kind]) and its settings."""

    kind: Literal["fbank", "mfcc", "waveform"] = "fbank"  # waveform: samples as they are
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


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["char", "sentencepiece"] = "char"
    vocab_size: int = 256  # sentencepiece only
    model_type: Literal["unigram", "bpe"] = "unigram"  # sentencepiece only
    case: Literal["lower", "upper", "keep"] = "lower"  # applied to every text, refs included


class TaggedConfig:
    """Base of a family of configs chosen by their ``type`` key (e.g. ``model.encoder``).

    Each member is a frozen dataclass with a ``type`` field whose default is its name in
    the family's table; ``from_dict`` picks the member from the mapping's ``type`` and
    accepts only that member's keys.
    """

    FAMILY = "config"  # what the message calls the family ("encoder")
    TYPES: dict[str, type] = {}


class EncoderConfig(TaggedConfig):
    """``model.encoder``: one dataclass per encoder type (CRDNNConfig, ConformerConfig)."""

    FAMILY = "encoder"
    TYPES: dict[str, type] = {}


def _member(family: type):
    """Class decorator: register a tagged config under its default ``type``."""

    def register(cls: type) -> type:
        family.TYPES[cls.__dataclass_fields__["type"].default] = cls
        return cls

    return register


@_member(EncoderConfig)
@dataclass(frozen=True)
class CRDNNConfig(EncoderConfig):
    """Conv + recurrent + dense encoder (models/encoders/crdnn.py)."""

    type: Literal["crdnn"] = "crdnn"
    cnn_channels: tuple[int, ...] = (64, 128)  # one CNN block per entry
    cnn_kernel: int = 3
    freq_pool: int = 2  # frequency pooling after each CNN block
    time_pool: tuple[int, ...] = (1, 2)  # time subsampling after each CNN block
    rnn_type: Literal["lstm", "gru"] = "lstm"
    rnn_layers: int = 2
    rnn_units: int = 256  # per direction
    bidirectional: bool = True
    rnn_time_pool: int = 2  # extra time subsampling (frame stacking) before the RNN
    dnn_layers: int = 1
    dnn_units: int = 256
    dropout: float = 0.15


@_member(EncoderConfig)
@dataclass(frozen=True)
class ConformerConfig(EncoderConfig):
    """Conformer (Gulati et al., 2020; models/encoders/conformer.py)."""

    type: Literal["conformer"] = "conformer"
    subsampling: Literal[4, 6, 8] = 4  # convolutional subsampling factor in time
    subsampling_channels: int = 64  # channels of the subsampling convolutions
    dim: int = 144  # model width
    layers: int = 8
    heads: int = 4
    ffn_dim: int = 576  # each macaron feed-forward half: dim -> ffn_dim -> dim
    conv_kernel: int = 15  # depthwise convolution kernel; odd
    positional: Literal["rotary", "relative"] = "rotary"
    dropout: float = 0.1  # on every residual branch and the subsampling output
    attention_dropout: float = 0.0  # on the attention weights
    stochastic_depth: float = 0.0  # layer drop probability, rising linearly to this at the top


@_member(EncoderConfig)
@dataclass(frozen=True)
class SSLConfig(EncoderConfig):
    """A pretrained self-supervised encoder (wav2vec 2.0, HuBERT, WavLM) through Hugging
    Face transformers (``pip install earshot[ssl]``; models/encoders/ssl.py), on the
    ``waveform`` front end. ``path`` is a local checkpoint directory (config.json and
    weights), never a hub name; ``architecture`` instead builds the encoder, randomly
    initialised, from a transformers config mapping (``model_type`` and its keys). A model
    directory stores the architecture and the weights, so it needs neither."""

    type: Literal["ssl"] = "ssl"
    path: str = ""  # local transformers checkpoint directory, e.g. /models/wav2vec2-base
    architecture: dict = field(default_factory=dict)  # transformers config; set by model dirs
    from_scratch: bool = False  # build path's architecture but leave its weights (an ablation)
    layer: int = -1  # hidden state used: 0 = before the first transformer layer, -1 = the output
    weighted_layers: bool = False  # a learned softmax-weighted sum of every hidden state instead
    output_norm: bool = False  # layer-normalise (no parameters) each hidden state used
    projection: Literal["linear", "dnn", "none"] = "linear"  # into the decoder's memory
    projection_dim: int = 256
    projection_layers: int = 2  # dnn only: Linear + LayerNorm + LeakyReLU + dropout each
    dropout: float = 0.1  # on the projection's input and hidden layers
    freeze: Literal["none", "feature_encoder", "all"] = "feature_encoder"
    unfreeze_after: int = 0  # optimizer steps after which the frozen part trains; 0: never
    mask_prob: float = 0.05  # time masking in fine-tuning: share of frames starting a span
    mask_length: int = 10  # frames per masked span
    layerdrop: float | None = None  # transformer layer drop in training; None: the checkpoint's
    gradient_checkpointing: bool = False  # recompute activations in backward (long utterances)


@dataclass(frozen=True)
class AttentionConfig:
    type: Literal["content", "location", "multihead_location"] = "location"
    dim: int = 256  # multihead_location: split evenly over the heads
    heads: int = 4  # multihead_location only
    location_channels: int = 10  # location-aware only
    location_kernel: int = 31  # location-aware only; odd
    scaling: float = 1.0  # sharpening factor applied to the energies before softmax


@dataclass(frozen=True)
class DecoderConfig:
    rnn_type: Literal["lstm", "gru"] = "gru"
    layers: int = 1
    units: int = 256
    embedding_dim: int = 128
    dropout: float = 0.15
    attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Masks applied to normalised features in training only (Park et al., 2019)."""

    freq_masks: int = 0  # 0 disables frequency masking
    freq_width: int = 8  # maximum bins per frequency mask
    time_masks: int = 0  # 0 disables time masking
    time_width: int = 20  # maximum frames per time mask
    max_time_fraction: float = 0.2  # a time mask never covers more of an utterance than this


@dataclass(frozen=True)
class ModelConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    encoder: EncoderConfig = field(default_factory=CRDNNConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass(frozen=True)
class ScheduledSamplingConfig:
    max_prob: float = 0.0  # 0 disables scheduled sampling (pure teacher forcing)
    unit: Literal["step", "epoch"] = "epoch"
    start: int = 0  # probability is 0 before this step/epoch
    ramp: int = 1  # steps/epochs to ramp linearly from 0 to max_prob


@dataclass(frozen=True)
class LossConfig:
    ctc_weight: float = 0.3  # alpha in L = alpha * CTC + (1 - alpha) * NLL
    label_smoothing: float = 0.1
    scheduled_sampling: ScheduledSamplingConfig = field(default_factory=ScheduledSamplingConfig)
    # Intermediate CTC (Lee & Watanabe, 2021): the outputs of these Conformer blocks
    # (1-based, below the top one) also feed the CTC head in training, and the CTC term
    # becomes (1 - w) * CTC(top) + w * mean over the tapped blocks. No new parameters.
    intermediate_ctc_weight: float = 0.0  # w; 0 disables
    intermediate_ctc_layers: tuple[int, ...] = ()  # e.g. (2,) for a 4-block Conformer


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal["none", "newbob", "warmup", "cosine", "noam"] = "newbob"
    # newbob: multiply lr by `factor` when the dev metric improves by less than `threshold` (relative)
    factor: float = 0.5
    threshold: float = 0.0025
    patience: int = 0
    metric: Literal["loss", "cer", "wer"] = "loss"  # newbob: the dev metric it watches
    # warmup: linear warmup over warmup_steps, then inverse-square-root decay
    # cosine: linear warmup over warmup_steps, then cosine decay to min_lr_ratio * lr at the
    # run's last step (counted from the sampler: epochs x batches per epoch / accum_steps)
    # noam (Vaswani et al. 2017): optim.lr * model_dim^-0.5 * min(s^-0.5, s * warmup_steps^-1.5);
    # optim.lr is then a scale factor (peak = lr / sqrt(model_dim * warmup_steps))
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.02
    model_dim: int = 256


@dataclass(frozen=True)
class ParamGroupConfig:
    """Parameters whose names start with ``prefix`` (e.g. "encoder.") train at their own
    rate: ``lr`` where optim.lr would be; the schedule moves both alike."""

    prefix: str = ""
    lr: float = 1e-3
    weight_decay: float | None = None  # None: optim.weight_decay


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw", "adadelta"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 for adam/adadelta, decoupled for adamw
    param_groups: tuple[ParamGroupConfig, ...] = ()  # first matching prefix wins; the rest: lr
    grad_clip: float = 5.0  # max global grad norm; <= 0 disables
    accum_steps: int = 1  # gradient accumulation
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass(frozen=True)
class DataConfig:
    corpus: str = ""  # the training corpus's name for the model card; empty: train's folder name
    train: str = ""  # CutSet manifest (jsonl / jsonl.gz)
    dev: str = ""
    test: str = ""
    max_duration: float = 120.0  # seconds of audio per batch
    num_buckets: int = 10
    num_workers: int = 0
    max_utterance_duration: float = 30.0  # longer cuts are skipped (and counted)
    speed_perturb: tuple[float, ...] = ()  # e.g. (0.9, 1.0, 1.1); empty disables


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


# Decoding modes (``--mode``); earshot.decoding.api maps each to its search. Named here,
# without torch, so that building the CLI's parser stays fast.
DECODE_MODES = ("auto", "greedy", "beam", "joint", "ctc_greedy", "ctc_beam", "rescore")


@dataclass(frozen=True)
class TrainConfig:
    exp_dir: str = "exp/run"
    epochs: int = 20
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    keep_last: int = 2  # epoch checkpoints kept (and mid-epoch ones since the last epoch end)
    save_every_steps: int = 0  # also checkpoint inside an epoch every N optimizer steps; 0 off
    save_every_minutes: float = 0.0  # ... and/or every N minutes; 0 off
    max_bad_steps: int = 20  # stop after this many updates in a row skipped for inf/nan
    dist_timeout: float = 600.0  # seconds a rank waits for the others before the job ends
    average_best: int = 1  # export the average of the K best epochs (1 = best only)
    average_last: int = 0  # instead export the average of the last N epochs (0 = off)
    validate_every: int = 1  # dev pass every N epochs (and after the last); newbob needs 1
    validate_all_from: int = 0  # from this epoch on, a dev pass after every epoch (0: off)
    init_from: str = ""  # a model directory whose weights start a fresh run (fine-tuning)
    select_metric: Literal["cer", "wer", "loss"] = "cer"
    flush_denormal: bool = True
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    log_every: int = 10  # a "step" row in metrics.jsonl (and TensorBoard) every N steps
    tensorboard: bool = True  # also write EXP_DIR/tensorboard/ when tensorboard is installed
    plot_alignments: int = 3  # attention plots of this many dev utterances per epoch; 0 off


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


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


# ---------------------------------------------------------------------------
# dict <-> dataclass


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (valid keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, TaggedConfig) and not dataclasses.is_dataclass(tp):
        return _tagged(tp, value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is dict or origin is dict:  # a free-form mapping (a third-party config)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _tagged(family: type, value: Any, key: str) -> Any:
    """The member of a tagged family named by ``value['type']`` (default: the first)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
    name = value.get("type", next(iter(family.TYPES)))
    cls = family.TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"config key '{key}.type': unknown {family.FAMILY} type {name!r} "
                          f"(known: {', '.join(sorted(family.TYPES))})")
    names = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(value) - names)
    if foreign:
        owners = [t for t, other in family.TYPES.items()
                  if foreign[0] in {f.name for f in dataclasses.fields(other)}]
        belongs = f"; it belongs to {family.FAMILY} type {', '.join(owners)}" if owners else ""
        raise ConfigError(f"config key '{key}.{foreign[0]}' is not a key of {family.FAMILY} "
                          f"type '{name}'{belongs} (valid keys for '{name}': "
                          f"{', '.join(sorted(names))})")
    return from_dict(cls, value, key)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = ExperimentConfig):
    """Read YAML (or start from defaults), apply overrides, validate into ``cls``."""
    data = read_yaml(path) if path is not None else {}
    if hasattr(cls, "upgrade"):  # an older layout of the same config
        data = cls.upgrade(data or {})
    data = apply_overrides(data, list(overrides))
    try:
        cfg = from_dict(cls, data)
        validate(cfg)
    except ConfigError as err:  # named with the file it came from
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for frozen configs."""
    return dataclasses.replace(cfg, **changes)


def validate(cfg: Any) -> None:
    """Range checks that types alone cannot express."""
    if isinstance(cfg, (ExperimentConfig, ModelDescription)):
        _validate_model(cfg.model)
    if isinstance(cfg, LMExperimentConfig):
        _check(cfg.data.batch_size >= 1, "data.batch_size", "must be >= 1")
    if isinstance(cfg, PretrainExperimentConfig):
        _validate_pretraining(cfg)
    if isinstance(cfg, (ExperimentConfig, LMExperimentConfig, PretrainExperimentConfig)):
        _validate_training(cfg)
    _check_finite(cfg)
    if isinstance(cfg, ExperimentConfig):
        data = cfg.data
        _check(data.max_duration > 0, "data.max_duration", "must be positive")
        _check(data.num_buckets >= 1, "data.num_buckets", "must be >= 1")
        _check(data.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(data.max_utterance_duration > 0, "data.max_utterance_duration", "must be positive (seconds)")
        _check(all(0.5 <= f <= 2.0 for f in data.speed_perturb), "data.speed_perturb",
               "factors must be in [0.5, 2] (e.g. [0.9, 1.0, 1.1])")
        _check(0.0 <= cfg.loss.ctc_weight <= 1.0, "loss.ctc_weight", "must be in [0, 1]")
        _check(0.0 <= cfg.loss.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
        _check(0.0 <= cfg.loss.scheduled_sampling.max_prob <= 1.0,
               "loss.scheduled_sampling.max_prob", "must be in [0, 1]")
        _validate_intermediate_ctc(cfg.loss, cfg.model.encoder)
    if isinstance(cfg, (ExperimentConfig, ModelDescription, DecodeConfig)):
        dec = cfg if isinstance(cfg, DecodeConfig) else cfg.decode
        prefix = "" if isinstance(cfg, DecodeConfig) else "decode."
        _check(dec.beam_size >= 1, prefix + "beam_size", "must be >= 1")
        _check(dec.batch_size >= 1, prefix + "batch_size", "must be >= 1")
        # (no encoder emits 10 tokens a frame; a larger bound only lets a search that
        # never meets eos run for hours)
        _check(0 < dec.max_len_ratio <= MAX_LEN_RATIO, prefix + "max_len_ratio",
               f"must be in (0, {MAX_LEN_RATIO:g}] (output tokens per encoder frame)")
        _check(0 <= dec.min_len_ratio <= dec.max_len_ratio, prefix + "min_len_ratio",
               "must be in [0, max_len_ratio]")
        _check(dec.lm_weight >= 0, prefix + "lm_weight", "must be >= 0")
        _check(dec.coverage_weight >= 0, prefix + "coverage_weight", "must be >= 0")
        for key in ("max_attn_shift", "ctc_window", "pre_beam"):
            _check(getattr(dec, key) >= 0, prefix + key, "must be >= 0 (0: off)")
        _check(0.0 <= dec.ctc_weight <= 1.0, prefix + "ctc_weight", "must be in [0, 1]")
        _check(dec.temperature > 0, prefix + "temperature", "must be positive")
        _check(1 <= dec.nbest, prefix + "nbest", "must be >= 1")


MAX_LEN_RATIO = 10.0

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _check_finite(cfg: Any, where: str = "") -> None:
    """No number anywhere in ``cfg`` is nan or infinite (a model of NaNs starts there)."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
        elif isinstance(value, float):
            _check(math.isfinite(value), key, f"must be a finite number, got {value}")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_finite(item, f"{key}[{i}].")
                elif isinstance(item, float):
                    _check(math.isfinite(item), f"{key}[{i}]", f"must be a finite number, got {item}")


def _validate_intermediate_ctc(loss: LossConfig, enc: EncoderConfig) -> None:
    weight, layers = loss.intermediate_ctc_weight, loss.intermediate_ctc_layers
    _check(0.0 <= weight < 1.0, "loss.intermediate_ctc_weight", "must be in [0, 1) (0: off)")
    if weight == 0 and not layers:
        return
    _check(bool(layers), "loss.intermediate_ctc_layers",
           "must name at least one encoder block (e.g. [2]) when loss.intermediate_ctc_weight > 0")
    _check(weight > 0, "loss.intermediate_ctc_weight",
           "is 0, so loss.intermediate_ctc_layers would do nothing; give a weight (e.g. 0.3)")
    _check(loss.ctc_weight > 0, "loss.ctc_weight",
           "must be > 0 with intermediate CTC: the tapped blocks feed the CTC head")
    _check(isinstance(enc, ConformerConfig), "loss.intermediate_ctc_layers",
           f"taps Conformer blocks; model.encoder.type is {enc.type}")
    top = enc.layers
    _check(all(1 <= i < top for i in layers) and len(set(layers)) == len(layers),
           "loss.intermediate_ctc_layers",
           f"must be distinct blocks in [1, {top - 1}] (model.encoder.layers is {top}; "
           f"the top block already feeds the CTC head), got {list(layers)}")


def _validate_training(cfg: Any) -> None:
    """The ``optim`` and ``train`` sections every training config shares."""
    _check(bool(_DEVICE.fullmatch(cfg.train.device)), "train.device",
           f"{cfg.train.device!r} is not auto, cpu, cuda, cuda:N or mps")
    _check(math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0, "optim.lr", "must be a positive number")
    for i, group in enumerate(cfg.optim.param_groups):
        _check(bool(group.prefix), f"optim.param_groups[{i}].prefix", "must name a parameter prefix")
        _check(math.isfinite(group.lr) and group.lr >= 0, f"optim.param_groups[{i}].lr",
               "must be a number >= 0 (0 freezes the group)")
    _check(cfg.optim.scheduler.model_dim >= 1, "optim.scheduler.model_dim", "must be >= 1")
    _check(cfg.optim.accum_steps >= 1, "optim.accum_steps", "must be >= 1")
    _check(not math.isnan(cfg.optim.grad_clip), "optim.grad_clip", "must be a number (<= 0 disables)")
    sched = cfg.optim.scheduler
    _check(sched.type not in ("warmup", "cosine") or sched.warmup_steps >= 1,
           "optim.scheduler.warmup_steps", "must be >= 1")
    _check(0.0 <= sched.min_lr_ratio <= 1.0, "optim.scheduler.min_lr_ratio", "must be in [0, 1]")
    _check(cfg.train.epochs >= 1, "train.epochs", "must be >= 1")
    _check(cfg.train.keep_last >= 1, "train.keep_last", "must be >= 1")
    _check(cfg.train.average_best >= 1, "train.average_best", "must be >= 1")
    _check(cfg.train.average_last >= 0, "train.average_last", "must be >= 0 (0: by average_best)")
    _check(cfg.train.validate_every >= 1, "train.validate_every", "must be >= 1")
    _check(cfg.train.validate_all_from >= 0, "train.validate_all_from",
           "must be >= 0 (0: every train.validate_every epochs throughout)")
    _check(cfg.train.validate_every == 1 or cfg.optim.scheduler.type != "newbob",
           "train.validate_every", "must be 1 with optim.scheduler.type=newbob (it steps on "
           "every epoch's dev result)")
    _check(cfg.train.average_last <= cfg.train.epochs, "train.average_last",
           f"must be <= train.epochs ({cfg.train.epochs})")
    _check(cfg.train.save_every_steps >= 0, "train.save_every_steps", "must be >= 0 (0: off)")
    _check(cfg.train.save_every_minutes >= 0, "train.save_every_minutes", "must be >= 0 (0: off)")
    _check(cfg.train.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    _check(cfg.train.log_every >= 1, "train.log_every", "must be >= 1")
    _check(cfg.train.plot_alignments >= 0, "train.plot_alignments", "must be >= 0 (0: off)")
    _check(cfg.train.dist_timeout > 0, "train.dist_timeout", "must be positive (seconds)")


def _validate_model(model: ModelConfig) -> None:
    feats = model.features
    _check(feats.sample_rate >= 1000, "model.features.sample_rate", "must be >= 1000 (Hz)")
    _check(model.encoder.type != "ssl" or feats.kind == "waveform", "model.features.kind",
           f"must be waveform with model.encoder.type=ssl (got {feats.kind}): the "
           "self-supervised encoder learns its own front end from samples")
    if feats.kind != "waveform":
        _check(feats.num_mel_bins >= 1, "model.features.num_mel_bins", "must be >= 1")
        _check(feats.kind != "mfcc" or 1 <= feats.num_ceps <= feats.num_mel_bins,
               "model.features.num_ceps", "must be in [1, num_mel_bins]")
        _check(feats.frame_length_ms > 0, "model.features.frame_length_ms", "must be positive")
        _check(feats.frame_shift_ms > 0, "model.features.frame_shift_ms", "must be positive")
        _check(feats.dither >= 0, "model.features.dither", "must be >= 0")
    aug = model.specaugment
    for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
        _check(getattr(aug, key) >= 0, f"model.specaugment.{key}", "must be >= 0")
    _check(0.0 <= aug.max_time_fraction <= 1.0, "model.specaugment.max_time_fraction", "must be in [0, 1]")
    validate_encoder(model.encoder, "model.encoder")
    dec = model.decoder
    _check(dec.layers >= 1, "model.decoder.layers", "must be >= 1")
    _check(dec.units >= 1, "model.decoder.units", "must be >= 1")
    _check(dec.embedding_dim >= 1, "model.decoder.embedding_dim", "must be >= 1")
    _check(0.0 <= dec.dropout < 1.0, "model.decoder.dropout", "must be in [0, 1)")
    _check(dec.attention.dim >= 1, "model.decoder.attention.dim", "must be >= 1")
    _check(dec.attention.location_channels >= 1, "model.decoder.attention.location_channels", "must be >= 1")
    _check(dec.attention.scaling > 0, "model.decoder.attention.scaling", "must be positive")
    att = model.decoder.attention
    _check(att.location_kernel % 2 == 1, "model.decoder.attention.location_kernel", "must be odd")
    _check(att.heads >= 1 and (att.type != "multihead_location" or att.dim % att.heads == 0),
           "model.decoder.attention.heads", "must be >= 1 and divide model.decoder.attention.dim")


def validate_encoder(enc: EncoderConfig, where: str) -> None:
    """Range checks of one encoder config, per type; ``where`` is its dotted key."""
    checks = {
        CRDNNConfig: lambda: [
            (len(enc.cnn_channels) >= 1 and min(enc.cnn_channels) >= 1, "cnn_channels",
             "needs at least one block, each with >= 1 channel"),
            (len(enc.time_pool) == len(enc.cnn_channels), "time_pool",
             f"needs one entry per {where}.cnn_channels entry"),
            (min(enc.time_pool, default=1) >= 1 and enc.freq_pool >= 1 and enc.rnn_time_pool >= 1,
             "time_pool", "pooling factors (time_pool, freq_pool, rnn_time_pool) must be >= 1"),
            (enc.cnn_kernel >= 1 and enc.cnn_kernel % 2 == 1, "cnn_kernel", "must be odd and >= 1"),
            (enc.rnn_layers >= 1, "rnn_layers", "must be >= 1"),
            (enc.rnn_units >= 1, "rnn_units", "must be >= 1"),
            (enc.dnn_layers >= 0, "dnn_layers", "must be >= 0"),
            (enc.dnn_units >= 1, "dnn_units", "must be >= 1"),
            (0.0 <= enc.dropout < 1.0, "dropout", "must be in [0, 1)"),
        ],
        ConformerConfig: lambda: [
            (enc.dim >= 1 and enc.heads >= 1 and enc.dim % enc.heads == 0, "dim",
             f"must be a positive multiple of {where}.heads"),
            (enc.positional != "rotary" or (enc.dim // max(enc.heads, 1)) % 2 == 0, "dim",
             "rotary positions need an even width per head (dim / heads)"),
            (enc.layers >= 1, "layers", "must be >= 1"),
            (enc.ffn_dim >= 1, "ffn_dim", "must be >= 1"),
            (enc.subsampling_channels >= 1, "subsampling_channels", "must be >= 1"),
            (enc.conv_kernel >= 1 and enc.conv_kernel % 2 == 1, "conv_kernel", "must be odd and >= 1"),
            (0.0 <= enc.dropout < 1.0, "dropout", "must be in [0, 1)"),
            (0.0 <= enc.attention_dropout < 1.0, "attention_dropout", "must be in [0, 1)"),
            (0.0 <= enc.stochastic_depth < 1.0, "stochastic_depth", "must be in [0, 1)"),
        ],
        SSLConfig: lambda: [
            (bool(enc.path) != bool(enc.architecture), "path",
             f"give either {where}.path or {where}.architecture, not both" if enc.path else
             "give a local checkpoint directory (config.json and weights, e.g. one written "
             "by earshot pretrain)"),
            (not enc.architecture or isinstance(enc.architecture.get("model_type"), str),
             "architecture", "needs a model_type (e.g. wav2vec2, hubert, wavlm)"),
            (enc.projection_dim >= 1, "projection_dim", "must be >= 1"),
            (enc.projection_layers >= 1, "projection_layers", "must be >= 1"),
            (0.0 <= enc.dropout < 1.0, "dropout", "must be in [0, 1)"),
            (enc.unfreeze_after >= 0, "unfreeze_after", "must be >= 0 (0: never)"),
            (enc.unfreeze_after == 0 or enc.freeze != "none", "unfreeze_after",
             f"needs {where}.freeze to say what is frozen until then"),
            (0.0 <= enc.mask_prob < 1.0, "mask_prob", "must be in [0, 1)"),
            (enc.mask_length >= 1, "mask_length", "must be >= 1"),
            (enc.layerdrop is None or 0.0 <= enc.layerdrop < 1.0, "layerdrop", "must be in [0, 1)"),
        ],
    }
    for ok, key, reason in checks[type(enc)]():
        _check(ok, f"{where}.{key}", reason)


def _check(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {reason}")


# ---------------------------------------------------------------------------
# language model (issue 3): `earshot train-lm CONFIG`


@dataclass(frozen=True)
class LMConfig:
    embedding_dim: int = 128
    units: int = 512
    layers: int = 2
    dropout: float = 0.2


@dataclass(frozen=True)
class LMDataConfig:
    asr_model: str = ""  # ASR model directory; the LM uses its tokenizer/
    train_text: str = ""  # CutSet manifest (.jsonl / .jsonl.gz) or plain text, one sentence per line
    dev_text: str = ""  # same formats; empty: hold out 5% of train_text
    batch_size: int = 64  # sentences per batch


@dataclass(frozen=True)
class LMOptimConfig(OptimConfig):
    """``optim`` of a language model: OptimConfig with no schedule by default."""

    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(type="none"))


@dataclass(frozen=True)
class LossSelectedTrainConfig(TrainConfig):
    """``train`` of a task whose only dev metric is its loss (language models, pretraining):
    no WER to select by, no alignments to plot."""

    epochs: int = 10
    keep_last: int = 1
    select_metric: Literal["loss"] = "loss"
    plot_alignments: int = 0


@dataclass(frozen=True)
class LMTrainConfig(LossSelectedTrainConfig):
    """``train`` of a language model (the loss in nats per token)."""

    exp_dir: str = "exp/lm"


@dataclass(frozen=True)
class LMExperimentConfig:
    """``earshot train-lm``: the same engine (``train``, ``optim`` sections) as ``earshot
    train``; the language model is exported to ``<train.exp_dir>/model``."""

    model: LMConfig = field(default_factory=LMConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    optim: LMOptimConfig = field(default_factory=LMOptimConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)

    # earshot 0.2 kept everything under `train`; such configs (and LM directories) still load
    _MOVED = {"asr_model": "data", "train_text": "data", "dev_text": "data", "batch_size": "data",
              "lr": "optim", "grad_clip": "optim"}

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A config dict in the 0.2 layout moved to the current one (others unchanged)."""
        train = data.get("train")
        if not isinstance(train, dict) or not (set(train) & (set(cls._MOVED) | {"out_dir"})):
            return data
        data, train = dict(data), dict(train)
        for key, section in cls._MOVED.items():
            if key in train:
                data[section] = {**data.get(section, {}), key: train.pop(key)}
        if "out_dir" in train:
            train["exp_dir"] = train.pop("out_dir")
        data["train"] = train
        return data


# ---------------------------------------------------------------------------
# self-supervised pretraining: `earshot pretrain CONFIG`


@dataclass(frozen=True)
class PretrainModelConfig:
    """``model`` of ``earshot pretrain``: a wav2vec 2.0 (transformers' Wav2Vec2ForPreTraining)
    on the ``waveform`` front end, with its masking, negatives and Gumbel temperature."""

    init_from: str = ""  # checkpoint directory to continue pretraining; empty: a new model
    architecture: dict = field(default_factory=dict)  # Wav2Vec2Config keys over earshot's small default
    sample_rate: int = 16000  # audio is resampled to this rate on load
    waveform_norm: Literal["utterance", "none"] = "utterance"  # as model.features.waveform_norm
    mask_prob: float = 0.65  # share of frames starting a masked span (about half end up masked)
    mask_length: int = 10  # frames per masked span
    num_negatives: int = 50  # distractors per masked frame, drawn from the same utterance's masked frames
    diversity_weight: float = 0.1  # alpha in L = L_contrastive + alpha L_diversity
    gumbel_max: float = 2.0  # Gumbel-softmax temperature at step 0 ...
    gumbel_min: float = 0.5  # ... decaying by gumbel_decay a step down to this
    gumbel_decay: float = 0.9995


@dataclass(frozen=True)
class PretrainDataConfig:
    corpus: str = ""  # a name for the checkpoint's card; empty: the first source's name
    train: tuple[str, ...] = ()  # CutSet manifests (transcripts not needed) and/or folders of audio files
    dev: tuple[str, ...] = ()  # the same; empty: hold out dev_fraction of train
    dev_fraction: float = 0.05
    max_duration: float = 60.0  # seconds of audio per batch
    num_buckets: int = 10
    num_workers: int = 0
    max_utterance_duration: float = 20.0  # longer cuts are left out (and counted)


@dataclass(frozen=True)
class PretrainOptimConfig(OptimConfig):
    """``optim`` of pretraining: AdamW with warmup and cosine decay by default."""

    name: Literal["adam", "adamw", "adadelta"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.01
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(type="cosine", warmup_steps=500))


@dataclass(frozen=True)
class PretrainTrainConfig(LossSelectedTrainConfig):
    """``train`` of pretraining (the loss per masked frame)."""

    exp_dir: str = "exp/pretrain"


@dataclass(frozen=True)
class PretrainExperimentConfig:
    """``earshot pretrain``: self-supervised wav2vec 2.0 pretraining on the same engine as
    ``earshot train``; the checkpoint is exported to ``<train.exp_dir>/model``, a directory
    ``model.encoder.path`` accepts."""

    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)


def _validate_pretraining(cfg: PretrainExperimentConfig) -> None:
    m, d = cfg.model, cfg.data
    _check(m.sample_rate >= 1000, "model.sample_rate", "must be >= 1000 (Hz)")
    _check(0.0 < m.mask_prob < 1.0, "model.mask_prob", "must be in (0, 1)")
    _check(m.mask_length >= 1, "model.mask_length", "must be >= 1")
    _check(m.num_negatives >= 1, "model.num_negatives", "must be >= 1")
    _check(m.diversity_weight >= 0, "model.diversity_weight", "must be >= 0")
    _check(0 < m.gumbel_min <= m.gumbel_max, "model.gumbel_min", "must be in (0, model.gumbel_max]")
    _check(0 < m.gumbel_decay <= 1, "model.gumbel_decay", "must be in (0, 1]")
    _check(not (m.init_from and m.architecture), "model.architecture",
           "cannot change the architecture of model.init_from's checkpoint")
    _check(bool(d.train), "data.train", "give at least one manifest or folder of audio files")
    _check(0.0 < d.dev_fraction < 1.0 or bool(d.dev), "data.dev_fraction", "must be in (0, 1)")
    _check(d.max_duration > 0, "data.max_duration", "must be positive")
    _check(d.num_buckets >= 1, "data.num_buckets", "must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.max_utterance_duration > 0, "data.max_utterance_duration", "must be positive (seconds)")
