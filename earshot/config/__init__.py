"""Typed, frozen configuration for every part of earshot, and YAML <-> dataclass.

YAML holds values only; defaults live in the dataclasses. An unknown key, a value of the
wrong type or out of range is a ``ConfigError`` that names the dotted key, raised before
any work starts. The machinery is in ``core``; each task's schema in its own module
(``model``, ``decode``, ``training``, ``asr``, ``lm``, ``pretrain``); the names a config
may choose from (encoders, optimizers, ...) in ``earshot.choices``.

>>> cfg = load_config(None, ["model.encoder.rnn_layers=3", "train.epochs=2"])
>>> cfg.model.encoder.rnn_layers, cfg.train.epochs
(3, 2)
"""

from earshot.choices import DECODE_MODES
from earshot.config.asr import (DataConfig, ExperimentConfig, LossConfig, ScheduledSamplingConfig)
from earshot.config.core import (TaggedConfig, apply_overrides, check, from_dict, load_config,
                                 read_yaml, replace, save_config, to_dict)
from earshot.config.decode import MAX_LEN_RATIO, DecodeConfig
from earshot.config.lm import LMConfig, LMDataConfig, LMExperimentConfig, LMOptimConfig, LMTrainConfig
from earshot.config.model import (MODEL_DIR_FORMAT, AttentionConfig, DecoderConfig, EncoderConfig,
                                  FeatureConfig, ModelCard, ModelConfig, ModelDescription,
                                  SpecAugmentConfig, TokenizerConfig)
from earshot.config.pretrain import (PretrainDataConfig, PretrainExperimentConfig,
                                     PretrainModelConfig, PretrainOptimConfig, PretrainTrainConfig)
from earshot.config.training import (LossSelectedTrainConfig, OptimConfig, ParamGroupConfig,
                                     SchedulerConfig, TrainConfig)

__all__ = [
    "DECODE_MODES", "MAX_LEN_RATIO", "MODEL_DIR_FORMAT", "AttentionConfig", "DataConfig",
    "DecodeConfig", "DecoderConfig", "EncoderConfig", "ExperimentConfig", "FeatureConfig",
    "LMConfig", "LMDataConfig", "LMExperimentConfig", "LMOptimConfig", "LMTrainConfig",
    "LossConfig", "LossSelectedTrainConfig", "ModelCard", "ModelConfig", "ModelDescription",
    "OptimConfig", "ParamGroupConfig", "PretrainDataConfig", "PretrainExperimentConfig",
    "PretrainModelConfig", "PretrainOptimConfig", "PretrainTrainConfig", "ScheduledSamplingConfig",
    "SchedulerConfig", "SpecAugmentConfig", "TaggedConfig", "TokenizerConfig", "TrainConfig",
    "apply_overrides", "check", "from_dict", "load_config", "read_yaml", "replace", "save_config",
    "to_dict",
]
