"""wav2vec 2.0 pretraining model (what ``earshot pretrain`` trains): transformers'
``Wav2Vec2ForPreTraining`` behind earshot's waveform front end, with earshot's masks and
negatives.

The model is a convolutional feature encoder, a Transformer over its frames and a
Gumbel-softmax product quantiser of the (unmasked) features. Spans of frames are masked
before the Transformer; at each masked frame the Transformer's output must pick the
quantised feature of that frame out of ``num_negatives`` distractors, the quantised
features of other masked frames of the same utterance (contrastive loss, InfoNCE with
cosine similarity over a temperature), while a diversity loss keeps the codebooks in use.
The Gumbel temperature decays per optimizer step from ``gumbel_max`` to ``gumbel_min``.
Both losses are means over masked frames. Masks and negatives are drawn from torch's
generator on the CPU, so a reseeded step draws the same ones. ``transformers`` is the
optional ``ssl`` extra (``pip install earshot[ssl]``), imported when the model is built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from earshot.config import FeatureConfig, PretrainModelConfig
from earshot.errors import ConfigError
from earshot.frontends import WaveformFrontEnd
from earshot.masks import lengths_to_mask
from earshot.models.encoders.ssl import check_checkpoint_dir, import_transformers, span_mask

# A wav2vec 2.0 small enough to pretrain on two CPU cores: 3.6 M parameters, 67 k of them
# in the 64-channel feature encoder (its convolutions at the sample rate cost the most:
# 128 channels halve the speed); ``model.architecture`` overrides any key.
SMALL_WAV2VEC2 = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
    "conv_dim": [64] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "feat_extract_norm": "layer", "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 64, "num_conv_pos_embedding_groups": 16,
    "hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "feat_proj_dropout": 0.1, "layerdrop": 0.0, "feat_quantizer_dropout": 0.0,
    "num_codevector_groups": 2, "num_codevectors_per_group": 64, "codevector_dim": 128,
    "proj_codevector_dim": 128, "contrastive_logits_temperature": 0.1,
}


def sample_negatives(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, k) flat indices into the (B * T) frames: for each masked frame, ``k`` other
    masked frames of the same row, uniformly with replacement (entries of unmasked frames
    are arbitrary; the loss ignores them). Draws from torch's generator."""
    b, t = mask.shape
    count = mask.sum(1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # masked frames first
    rank = mask.long().cumsum(1) - 1  # a masked frame's place among its row's masked frames
    draw = (torch.rand(b, t, k) * (count.clamp(min=2) - 1).view(b, 1, 1)).floor().long()
    draw = (draw + (draw >= rank[:, :, None]).long()).clamp(max=t - 1)  # never the frame itself
    picked = torch.gather(order, 1, draw.view(b, -1)).view(b, t, k)
    return picked + (torch.arange(b) * t).view(b, 1, 1)


class Wav2Vec2Pretrainer(nn.Module):
    """Waveform front end + Wav2Vec2ForPreTraining, with earshot's masks and negatives:
    ``forward(wavs, wav_lens) -> (loss, contrastive, diversity, codebook perplexity)``."""

    def __init__(self, cfg: PretrainModelConfig):
        super().__init__()
        transformers = import_transformers()
        self.cfg = cfg
        self.frontend = WaveformFrontEnd(FeatureConfig(kind="waveform", sample_rate=cfg.sample_rate,
                                                       waveform_norm=cfg.waveform_norm))
        overrides = {"mask_time_prob": cfg.mask_prob, "mask_time_length": cfg.mask_length,
                     "mask_feature_prob": 0.0, "num_negatives": cfg.num_negatives,
                     "diversity_loss_weight": cfg.diversity_weight, "apply_spec_augment": True}
        if cfg.init_from:
            found = check_checkpoint_dir(cfg.init_from, "model.init_from")["model_type"]
            if found != "wav2vec2":
                raise ConfigError(f"config key 'model.init_from': {cfg.init_from} holds a {found} "
                                  "model; pretraining continues wav2vec2 checkpoints only")
            self.net = transformers.Wav2Vec2ForPreTraining.from_pretrained(
                cfg.init_from, local_files_only=True, **overrides)
        else:
            known = set(transformers.Wav2Vec2Config().to_dict())
            for key in cfg.architecture:
                if key not in known:
                    raise ConfigError(f"config key 'model.architecture.{key}' is not a Wav2Vec2Config "
                                      f"key (e.g. {', '.join(sorted(SMALL_WAV2VEC2)[:6])}, ...)")
            arch = {**SMALL_WAV2VEC2, **cfg.architecture, **overrides}
            self.net = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**arch))
        self.net.set_gumbel_temperature(cfg.gumbel_max)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def frames(self, wav_lens: torch.Tensor) -> torch.Tensor:
        """Feature-encoder frames of ``wav_lens`` samples (0 below its receptive field)."""
        return self.net._get_feat_extract_output_lengths(wav_lens.long()).long().clamp(min=0)

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Whether layer drop may leave some parameters without a gradient in a step."""
        return bool(self.net.config.layerdrop)

    def save_backbone(self, directory: Path) -> None:
        """The transformers model as a checkpoint directory (``save_pretrained``)."""
        self.net.save_pretrained(directory)

    def set_training_step(self, step: int) -> None:
        cfg = self.cfg
        self.net.set_gumbel_temperature(max(cfg.gumbel_max * cfg.gumbel_decay ** step, cfg.gumbel_min))

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, lens = self.frontend(wavs, wav_lens)
        x = x.squeeze(2)
        frames = self.frames(lens.cpu())
        width = int(self.frames(torch.tensor([x.size(1)]))[0])
        mask = span_mask(frames, width, self.cfg.mask_prob, self.cfg.mask_length)
        negatives = sample_negatives(mask, self.cfg.num_negatives)
        out = self.net(x, attention_mask=lengths_to_mask(lens, x.size(1)).long(),
                       mask_time_indices=mask.to(x.device),
                       sampled_negative_indices=negatives.to(x.device))
        masked = mask.sum().clamp(min=1).to(x.device)
        contrastive, diversity = out.contrastive_loss / masked, out.diversity_loss / masked
        loss = contrastive + self.cfg.diversity_weight * diversity
        return loss, contrastive, diversity, out.codevector_perplexity
