"""The whole recogniser: features -> CMVN -> encoder -> (CTC head, attentional decoder).

``forward`` returns the joint training loss L = alpha * CTC + (1 - alpha) * NLL;
decoding (greedy or beam search) drives ``encode`` and the decoder's step interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from earshot.augment import spec_augment
from earshot.config import LossConfig, ModelConfig
from earshot.losses import ctc_loss, joint_loss, nll_loss
from earshot.models.ctc import CTCHead
from earshot.models.decoder import AttentionalDecoder
from earshot.models.registry import ENCODERS


@dataclass
class LossOutput:
    """loss: differentiable joint loss; ctc, nll: detached parts; ntokens: targets incl. eos."""

    loss: torch.Tensor
    ctc: torch.Tensor
    nll: torch.Tensor
    ntokens: int


class EncoderDecoderASR(nn.Module):
    """Joint CTC/attention encoder-decoder. specials: dict(blank=, pad=, bos=, eos=) token ids."""

    # Parameters whose first dimension is indexed by token id (moved row by row when a
    # pretrained model meets another tokenizer; see modeldir.init_from_model_dir).
    TOKEN_INDEXED = ("ctc.proj.weight", "ctc.proj.bias", "decoder.embedding.weight",
                     "decoder.output.weight", "decoder.output.bias")

    def __init__(self, cfg: ModelConfig, vocab_size: int, specials: dict[str, int]):
        super().__init__()
        # Imported here so that the model code only depends on features' contract.
        from earshot.features import FeatureExtractor, GlobalCMVN

        self.cfg = cfg
        self.specials = dict(specials)
        self.features = FeatureExtractor(cfg.features)
        self.normalizer = GlobalCMVN(self.features.out_dim)
        self.encoder = ENCODERS[cfg.encoder.type](cfg.encoder, self.features.out_dim)
        self.ctc = CTCHead(self.encoder.output_dim, vocab_size)
        self.decoder = AttentionalDecoder(cfg.decoder, vocab_size, self.encoder.output_dim,
                                          specials["bos"])

    def encode(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs (B, S), wav_lens (B,) -> h (B, T', H), h_lens (B,)."""
        # Features are fixed signal processing: no gradient, and always float32.
        with torch.no_grad(), torch.autocast(device_type=wavs.device.type, enabled=False):
            feats, lens = self.features(wavs.float(), wav_lens)
            feats = self.normalizer(feats, lens)
            if self.training:
                feats = spec_augment(feats, lens, self.cfg.specaugment)
        return self.encoder(feats, lens)

    def forward(self, batch: Any, loss_cfg: LossConfig, sampling_prob: float = 0.0) -> LossOutput:
        """Joint loss for a Batch (wavs, wav_lens, tokens (B, U) padded with pad, token_lens)."""
        # 1. encoder
        h, h_lens = self.encode(batch.wavs, batch.wav_lens)
        # 2a. CTC branch
        ctc = ctc_loss(self.ctc(h), h_lens, batch.tokens, batch.token_lens, self.specials["blank"])
        # 2b. attention branch: [bos] + y -> y + [eos]
        tokens_in, targets = self.decoder_io(batch.tokens, batch.token_lens)
        logits = self.decoder(self.decoder.memory(h, h_lens), tokens_in, sampling_prob)
        nll = nll_loss(logits, targets, batch.token_lens + 1, self.specials["pad"],
                       loss_cfg.label_smoothing)
        loss = joint_loss(ctc, nll, loss_cfg.ctc_weight)
        ntokens = int((batch.token_lens + 1).sum())
        return LossOutput(loss, ctc.detach(), nll.detach(), ntokens)

    def decoder_io(
        self, tokens: torch.Tensor, token_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, U) -> decoder input [bos] + y (B, U+1) and target y + [eos] (B, U+1), pad after."""
        b = tokens.size(0)
        bos = tokens.new_full((b, 1), self.specials["bos"])
        pad = tokens.new_full((b, 1), self.specials["pad"])
        tokens_in = torch.cat([bos, tokens], dim=1)
        targets = torch.cat([tokens, pad], dim=1)
        targets[torch.arange(b, device=tokens.device), token_lens] = self.specials["eos"]
        return tokens_in, targets
