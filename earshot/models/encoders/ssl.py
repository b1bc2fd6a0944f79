"""Self-supervised encoders (wav2vec 2.0, HuBERT, WavLM) through Hugging Face transformers.

``transformers`` is an optional extra (``pip install earshot[ssl]``), imported only when
such an encoder is built. The encoder comes from a local checkpoint directory
(``model.encoder.path``: config.json and weights, as ``save_pretrained`` or ``earshot
pretrain`` writes them) or, randomly initialised, from a config mapping
(``model.encoder.architecture``); it is never fetched from the hub. A model directory
keeps the architecture in its config.yaml and the weights in its safetensors, so it
loads where the original checkpoint never was.

Input is the ``waveform`` front end's (B, S, 1). The chosen hidden state (a layer, or a
learned softmax-weighted sum of all of them) is optionally layer-normalised and
projected to ``projection_dim``. Padding is honoured as far as the checkpoint allows:
the transformer never attends to padded frames, and with a layer-normalised feature
encoder (``feat_extract_norm: layer``, as ``earshot pretrain`` makes) an utterance's
output is the same alone or padded in a batch; a group-normalised one (wav2vec 2.0 base)
normalises each channel over the whole padded row, as it did in pretraining.

Fine-tuning controls: ``freeze`` (none, the convolutional ``feature_encoder``, or
``all``) until ``unfreeze_after`` optimizer steps (0: for good); a frozen part is run
without building its graph, so its parameters get no gradient (the whole encoder runs
in evaluation mode while frozen: no dropout, layer drop or masking). In training, time
spans are replaced by the checkpoint's mask embedding (``mask_prob``, ``mask_length``),
drawn from torch's generator so that a resumed run draws the same masks.
"""

from __future__ import annotations

import json
import logging
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from earshot.config import EncoderConfig
from earshot.config.core import MAX_LAYERS, MAX_WIDTH, dotted, require, require_size
from earshot.errors import ConfigError
from earshot.masks import lengths_to_mask, zero_padding
from earshot.models.dropout import Dropout
from earshot.models.encoders.base import Encoder

log = logging.getLogger(__name__)

# transformers model types with the wav2vec 2.0 interface (feature_extractor, masked_spec_embed,
# _get_feat_extract_output_lengths, hidden states per layer).
FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech",
            "unispeech-sat")
# transformers config keys about the run or other model heads, not this encoder's shape
GENERIC_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "torch_dtype",
                       "dtype", "output_hidden_states", "output_attentions", "return_dict",
                       "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
                       "problem_type")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class SSLConfig(EncoderConfig):
    """``model.encoder`` with ``type: ssl``: a pretrained self-supervised encoder (wav2vec
    2.0, HuBERT, WavLM) through Hugging Face transformers (``pip install earshot[ssl]``),
    on the ``waveform`` front end. ``path`` is a local checkpoint directory (config.json
    and weights), never a hub name; ``architecture`` instead builds the encoder, randomly
    initialised, from a transformers config mapping (``model_type`` and its keys). A model
    directory stores the architecture and the weights, so it needs neither."""

    FRONTEND = "waveform"
    FRONTEND_REASON = "the self-supervised encoder learns its own front end from samples"

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

    def check(self, key: str) -> None:
        def at(name: str) -> str:
            return dotted(key, name)

        require(bool(self.path) != bool(self.architecture), at("path"),
                f"give either {at('path')} or {at('architecture')}, not both" if self.path else
                "give a local checkpoint directory (config.json and weights, e.g. one written "
                "by earshot pretrain)")
        require(not self.architecture or isinstance(self.architecture.get("model_type"), str),
                at("architecture"), "needs a model_type (e.g. wav2vec2, hubert, wavlm)")
        require_size(self.projection_dim, at("projection_dim"), MAX_WIDTH)
        require_size(self.projection_layers, at("projection_layers"), MAX_LAYERS)
        require(0.0 <= self.dropout < 1.0, at("dropout"), "must be in [0, 1)")
        require(self.unfreeze_after >= 0, at("unfreeze_after"), "must be >= 0 (0: never)")
        require(self.unfreeze_after == 0 or self.freeze != "none", at("unfreeze_after"),
                f"needs {at('freeze')} to say what is frozen until then")
        require(0.0 <= self.mask_prob < 1.0, at("mask_prob"), "must be in [0, 1)")
        require(self.mask_length >= 1, at("mask_length"), "must be >= 1")
        require(self.layerdrop is None or 0.0 <= self.layerdrop < 1.0, at("layerdrop"),
                "must be in [0, 1)")


def import_transformers() -> types.ModuleType:
    """The transformers module, or a ConfigError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.encoder.type=ssl needs Hugging Face transformers, an optional "
                          "extra: pip install 'earshot[ssl]'") from None
    return transformers


def check_checkpoint_dir(path: str | Path, key: str = "model.encoder.path") -> dict:
    """The config.json mapping of a local checkpoint directory of a supported family;
    ConfigError saying what was expected otherwise (no network is ever asked)."""
    p = Path(path)
    expected = ("a local transformers checkpoint directory of a wav2vec 2.0 / HuBERT / WavLM "
                "model (config.json and model.safetensors or pytorch_model.bin)")
    if not p.is_dir():
        raise ConfigError(f"config key '{key}': {path} is not a directory; expected {expected}")
    config_file = p / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"config key '{key}': {path} has no config.json; expected {expected}")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"config key '{key}': {config_file} is not valid JSON ({err})") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in FAMILIES:
        raise ConfigError(f"config key '{key}': {config_file} describes a {model_type!r} model; "
                          f"expected one of the self-supervised speech families {', '.join(FAMILIES)}")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"config key '{key}': {path} has a config.json but no weights "
                          f"({' or '.join(WEIGHT_FILES[::2])})")
    return data


def checkpoint_sample_rate(path: str | Path) -> int | None:
    """The sampling rate a checkpoint's preprocessor_config.json names, if it has one."""
    pre = Path(path) / "preprocessor_config.json"
    if not pre.is_file():
        return None
    try:
        rate = json.loads(pre.read_text(encoding="utf-8")).get("sampling_rate")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return int(rate) if isinstance(rate, (int, float)) else None


def load_backbone(cfg: SSLConfig) -> nn.Module:
    """The transformers model (e.g. Wav2Vec2Model) of ``cfg.path`` or ``cfg.architecture``."""
    transformers = import_transformers()
    overrides = {} if cfg.layerdrop is None else {"layerdrop": cfg.layerdrop}
    if cfg.architecture:
        arch = dict(cfg.architecture)
        model_type = arch.pop("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(f"config key 'model.encoder.architecture.model_type': {model_type!r} "
                              f"is not one of {', '.join(FAMILIES)}")
        arch.pop("transformers_version", None)
        config = transformers.AutoConfig.for_model(model_type, **{**arch, **overrides})
        return transformers.AutoModel.from_config(config)
    check_checkpoint_dir(cfg.path)
    if cfg.from_scratch:
        config = transformers.AutoConfig.from_pretrained(cfg.path, local_files_only=True, **overrides)
        return transformers.AutoModel.from_config(config)
    return transformers.AutoModel.from_pretrained(cfg.path, local_files_only=True, **overrides)


def span_mask(lens: torch.Tensor, width: int, prob: float, span: int) -> torch.Tensor:
    """(B, width) bool: for each row of ``lens`` frames, about ``prob * len / span`` spans
    of ``span`` frames (at least one; rounded at random), starting uniformly within the
    row, so that about ``prob`` of the frames start a span (spans may overlap, as in
    wav2vec 2.0). Frames past a row's length are never masked. Draws from torch's
    generator."""
    b, device = lens.numel(), lens.device
    mask = torch.zeros(b, width, dtype=torch.bool, device=device)
    if prob <= 0 or b == 0 or width == 0:
        return mask
    lens = lens.long().clamp(max=width)
    count = (prob * lens.float() / span + torch.rand(b, device=device)).floor().long().clamp(min=1)
    count = torch.where(lens > 0, count, 0)
    most = int(count.max())
    if most == 0:
        return mask
    room = (lens - span).clamp(min=0) + 1  # start positions 0 .. room - 1
    starts = (torch.rand(b, most, device=device) * room[:, None]).floor().long()
    pos = starts[:, :, None] + torch.arange(span, device=device)  # (B, N, span)
    keep = (torch.arange(most, device=device)[None, :, None] < count[:, None, None]) \
        & (pos < lens[:, None, None])
    rows = torch.arange(b, device=device)[:, None, None].expand_as(pos)
    mask[rows[keep], pos[keep]] = True
    return mask


class Projection(nn.Module):
    """Into the decoder's memory: dropout then Linear (``linear``), or ``layers`` x (Linear,
    LayerNorm, LeakyReLU, dropout) (``dnn``), or nothing (``none``)."""

    def __init__(self, cfg: SSLConfig, in_dim: int):
        super().__init__()
        self.dropout = Dropout(cfg.dropout)
        if cfg.projection == "none":
            self.net, self.output_dim = nn.Identity(), in_dim
        elif cfg.projection == "linear":
            self.net, self.output_dim = nn.Linear(in_dim, cfg.projection_dim), cfg.projection_dim
        else:
            layers, dim = [], in_dim
            for _ in range(cfg.projection_layers):
                layers += [nn.Linear(dim, cfg.projection_dim), nn.LayerNorm(cfg.projection_dim),
                           nn.LeakyReLU(), Dropout(cfg.dropout)]
                dim = cfg.projection_dim
            self.net, self.output_dim = nn.Sequential(*layers), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.dropout(x))


class SSLEncoder(Encoder):
    """(wavs (B, S, 1), lens) -> (h (B, T', output_dim) zero past h_lens, h_lens)."""

    Config = SSLConfig

    def __init__(self, cfg: SSLConfig, input_dim: int):
        super().__init__()
        if input_dim != 1:
            raise ConfigError("config key 'model.features.kind': the ssl encoder takes samples "
                              "(the waveform front end)")
        self.cfg = cfg
        self.model = load_backbone(cfg)
        # the rate its checkpoint was trained at, where the checkpoint says (EncoderDecoderASR
        # checks it against model.features.sample_rate)
        self.sample_rate = checkpoint_sample_rate(cfg.path) if cfg.path else None
        config = self.model.config
        states = config.num_hidden_layers + 1
        if not -states <= cfg.layer < states:
            raise ConfigError(f"config key 'model.encoder.layer': {cfg.layer} is out of range: "
                              f"this encoder has hidden states 0..{states - 1} (or -1 for the last)")
        self._own_masking(config)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.layer_weights = nn.Parameter(torch.zeros(states)) if cfg.weighted_layers else None
        self.projection = Projection(cfg, config.hidden_size)
        self.output_dim = self.projection.output_dim
        self.step = 0  # optimizer steps done (set_training_step), for unfreeze_after
        # A frozen feature encoder's output leaves its graph (no gradient reaches it).
        self.model.feature_extractor.register_forward_hook(self._cut_feature_graph)

    def _own_masking(self, config) -> None:
        """Masking only through ``span_mask``: never transformers' own numpy draws, which a
        resumed run could not repeat. Keeps the config consistent with the parameters so a
        model directory rebuilds the same module."""
        config.mask_feature_prob = 0.0
        if self.cfg.mask_prob > 0 and not hasattr(self.model, "masked_spec_embed"):
            self.model.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        if hasattr(self.model, "masked_spec_embed"):
            config.mask_time_prob = self.cfg.mask_prob or config.mask_time_prob or 0.05
            config.apply_spec_augment = True

    # -- what the rest of earshot asks -------------------------------------------------

    @property
    def architecture(self) -> dict:
        """The transformers config as a plain mapping (what a model directory stores)."""
        arch = self.model.config.to_dict()
        for key in GENERIC_CONFIG_KEYS:
            arch.pop(key, None)
        return arch

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Some parameters get no gradient in some steps (frozen parts, layer drop)."""
        return self.cfg.freeze != "none" or bool(self.model.config.layerdrop)

    def set_training_step(self, step: int) -> None:
        self.step = step

    def parameter_groups(self) -> dict[str, str]:
        """The pretrained transformers model, and the new projection (and layer weights)."""
        return {"pretrained": "model.", "projection": "projection."}

    def portable_config(self, cfg: SSLConfig) -> SSLConfig:
        """The architecture instead of the checkpoint path it was first loaded from."""
        return replace(cfg, path="", from_scratch=False, architecture=self.architecture)

    def frozen_part(self) -> str:
        """What is frozen now: "none", "feature_encoder" or "all"."""
        if self.cfg.freeze == "none" or (self.cfg.unfreeze_after and self.step >= self.cfg.unfreeze_after):
            return "none"
        return self.cfg.freeze

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Frames of the convolutional feature encoder for ``lens`` samples (0 when shorter
        than its receptive field)."""
        return self.model._get_feat_extract_output_lengths(lens.long()).long().clamp(min=0)

    # -- forward ---------------------------------------------------------------------

    def _cut_feature_graph(self, module, inputs, output):
        if self.training and self.frozen_part() != "none":
            return output.detach()
        return None

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wavs, lens = x.squeeze(2), lens.long()
        h_lens = self.output_lengths(lens)
        attention_mask = lengths_to_mask(lens, wavs.size(1)).long()
        frozen = self.frozen_part() == "all"
        masking = self.training and not frozen and hasattr(self.model, "masked_spec_embed")
        kwargs = {"attention_mask": attention_mask,
                  "output_hidden_states": self.cfg.weighted_layers or self.cfg.layer != -1}
        if masking:  # (all False with mask_prob 0: transformers then draws none of its own)
            width = int(self.output_lengths(torch.tensor([wavs.size(1)]))[0])
            kwargs["mask_time_indices"] = span_mask(h_lens, width, self.cfg.mask_prob, self.cfg.mask_length)
        if frozen:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    out = self.model(wavs, **kwargs)
            finally:
                self.model.train(was_training)
        else:
            out = self.model(wavs, **kwargs)
        h = self._select(out)
        return zero_padding(self.projection(h), h_lens), h_lens

    def _select(self, out) -> torch.Tensor:
        # The last hidden state is the encoder's output: after the final LayerNorm of a
        # pre-norm ("stable layer norm") model, whose hidden_states[-1] precedes it.
        if not self.cfg.weighted_layers:
            states = None if self.cfg.layer == -1 else out.hidden_states
            h = out.last_hidden_state if states is None or self.cfg.layer in (-1, len(states) - 1) \
                else states[self.cfg.layer]
            return F.layer_norm(h, h.shape[-1:]) if self.cfg.output_norm else h
        states = torch.stack((*out.hidden_states[:-1], out.last_hidden_state))  # (L + 1, B, T, H)
        if self.cfg.output_norm:
            states = F.layer_norm(states, states.shape[-1:])
        weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
        return (weights[:, None, None, None] * states).sum(0)
