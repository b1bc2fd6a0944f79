"""The whole recogniser: a composition of parts that meet at narrow interfaces.

    front end (choices.FRONTENDS)     waveforms -> normalised features (owns its statistics)
    encoder   (choices.ENCODERS)      features -> h (B, T', H), exact lengths
    CTC head                          h -> log-probs (B, T', V)
    decoder                           attentional GRU/LSTM over h

``forward`` returns the joint training loss L = alpha * CTC + (1 - alpha) * NLL. Code
outside ``models/`` talks to the model through methods only: ``encode`` gives an
``Encoded`` batch (decoder memory, CTC log-probs, lengths) and the step interface
(``init_state``, ``step``, ``select_state``, ``select_memory``, ``repeat_memory``,
``alignment``, ``teacher_forced``) drives the decoder for greedy and beam search. The
parts declare which tensors are indexed by token (``token_indexed_names``) and which
hold corpus statistics (``statistics_names``); the trainer gathers those statistics with
``new_statistics`` / ``accumulate_statistics`` / ``set_statistics``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from earshot.augment import spec_augment
from earshot.choices import ENCODERS
from earshot.config import LossConfig, ModelConfig
from earshot.errors import ConfigError
from earshot.features import CMVNAccumulator
from earshot.frontends import build_frontend
from earshot.losses import ctc_loss, joint_loss, nll_loss
from earshot.models.ctc import CTCHead
from earshot.models.decoder import AttentionalDecoder, DecoderState, Memory
from earshot.models.encoders.base import Encoder


@dataclass
class LossOutput:
    """loss: differentiable joint loss; ctc (the top block's), nll: detached parts;
    ntokens: targets incl. eos; intermediate_ctc: the mean CTC loss of the tapped blocks
    (detached) when intermediate CTC is on, else None."""

    loss: torch.Tensor
    ctc: torch.Tensor
    nll: torch.Tensor
    ntokens: int
    intermediate_ctc: torch.Tensor | None = None


@dataclass
class Encoded:
    """An encoded batch: what every decoding mode starts from.

    memory: the decoder's view of the encoder output (enc (B, T', H), lengths, mask, keys);
    ctc_log_probs (B, T', V) float32; lens (B,) encoder frames (0 for an utterance too
    short to give one); tapped_ctc_log_probs: the CTC head on each tapped encoder block
    (intermediate CTC in training; empty otherwise).
    """

    memory: Memory
    ctc_log_probs: torch.Tensor
    lens: torch.Tensor
    tapped_ctc_log_probs: tuple[torch.Tensor, ...] = ()

    def select(self, index: torch.Tensor) -> "Encoded":
        """Rows ``index`` (B',) of the batch."""
        return Encoded(AttentionalDecoder.select_memory(self.memory, index),
                       self.ctc_log_probs.index_select(0, index), self.lens.index_select(0, index),
                       tuple(t.index_select(0, index) for t in self.tapped_ctc_log_probs))

    def __len__(self) -> int:
        return self.lens.numel()


class EncoderDecoderASR(nn.Module):
    """Joint CTC/attention encoder-decoder. specials: dict(blank=, pad=, bos=, eos=) token ids."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, specials: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.specials = dict(specials)
        self.vocab_size = vocab_size
        self.frontend = build_frontend(cfg.features)
        self.encoder: Encoder = ENCODERS.load(cfg.encoder.type)(cfg.encoder, self.frontend.out_dim)
        rate = self.encoder.sample_rate  # what a pretrained encoder was trained at
        if rate is not None and rate != cfg.features.sample_rate:
            raise ConfigError(f"config key 'model.features.sample_rate': {cfg.features.sample_rate} Hz, "
                              f"but the encoder's checkpoint was trained on {rate} Hz audio; set it "
                              f"to {rate} (audio is resampled to it on load)")
        self.ctc = CTCHead(self.encoder.output_dim, vocab_size)
        self.decoder = AttentionalDecoder(cfg.decoder, vocab_size, self.encoder.output_dim,
                                          specials["bos"])

    # -- what the parts declare ---------------------------------------------------

    @property
    def token_indexed_names(self) -> tuple[str, ...]:
        """State-dict names whose first dimension is indexed by token id."""
        return (*(f"ctc.{n}" for n in self.ctc.TOKEN_INDEXED),
                *(f"decoder.{n}" for n in self.decoder.TOKEN_INDEXED))

    @property
    def statistics_names(self) -> tuple[str, ...]:
        """State-dict names of corpus statistics (estimated on each new training set)."""
        return (*(f"frontend.{n}" for n in self.frontend.STATISTICS),
                *(f"encoder.{n}" for n in self.encoder.STATISTICS))

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def new_statistics(self) -> CMVNAccumulator | None:
        """An empty accumulator for the front end's statistics, or None if it has none."""
        return self.frontend.new_statistics()

    def accumulate_statistics(self, acc: CMVNAccumulator, wavs: torch.Tensor, wav_lens: torch.Tensor) -> None:
        self.frontend.accumulate(acc, wavs, wav_lens)

    def set_statistics(self, acc: CMVNAccumulator) -> None:
        self.frontend.set_statistics(acc)

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Whether some parameters can get no gradient in a step (a frozen or dropped part),
        which a data-parallel wrapper must be told."""
        return self.encoder.may_leave_parameters_unused

    def set_training_step(self, step: int) -> None:
        """Tell the parts how many optimizer steps are done (an encoder that unfreezes
        after N steps reads it); the trainer calls this before each training batch."""
        self.encoder.set_training_step(step)

    def portable_config(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` (this model's config) with what it takes to rebuild the model from its
        weights alone: an ssl encoder's architecture instead of its checkpoint path."""
        return dataclasses.replace(cfg, encoder=self.encoder.portable_config(cfg.encoder))

    def encoded_lengths(self, wav_lens: torch.Tensor) -> torch.Tensor:
        """Encoder frames for waveform lengths (B,), without running the network."""
        frames = self.frontend.num_frames(wav_lens)
        return torch.where(frames > 0, self.encoder.output_lengths(frames), 0)

    # -- encoding -----------------------------------------------------------------

    def encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor, taps: tuple[int, ...] = ()
               ) -> Encoded:
        """wavs (B, S), wav_lens (B,) -> Encoded. An utterance too short for one feature
        frame gets zero encoder frames (and all-zero outputs) instead of an error.
        ``taps``: encoder blocks (1-based) whose outputs also go through the CTC head
        (intermediate CTC; the encoder must have ``forward_with_taps``)."""
        with torch.autograd.profiler.record_function("frontend"):
            feats, lens = self.frontend(wavs, wav_lens)
            if self.training and self.frontend.spectral:  # the front end's output has no grad
                feats = spec_augment(feats, lens, self.cfg.specaugment)
        with torch.autograd.profiler.record_function("encoder"):
            h, h_lens, tapped = self._encode_features(feats, lens, taps)
        with torch.autograd.profiler.record_function("ctc"):
            log_probs = self.ctc(h)
            tapped_log_probs = tuple(self.ctc(t) for t in tapped)
        return Encoded(self.decoder.memory(h, h_lens), log_probs, h_lens, tapped_log_probs)

    def _run_encoder(self, feats: torch.Tensor, lens: torch.Tensor, taps: tuple[int, ...]):
        if taps:
            return self.encoder.forward_with_taps(feats, lens, taps)
        return (*self.encoder(feats, lens), [])

    def _encode_features(self, feats: torch.Tensor, lens: torch.Tensor, taps: tuple[int, ...]):
        valid = (lens > 0) & (self.encoder.output_lengths(lens) > 0)
        if bool(valid.all()):
            return self._run_encoder(feats, lens, taps)
        b = feats.size(0)
        out_lens = torch.zeros_like(lens)
        if not bool(valid.any()):
            return feats.new_zeros(b, 0, self.encoder.output_dim), out_lens, [
                feats.new_zeros(b, 0, self.encoder.output_dim) for _ in taps]
        rows = valid.nonzero(as_tuple=True)[0]
        h_rows, lens_rows, tapped_rows = self._run_encoder(
            feats[rows, : int(lens[rows].max())], lens[rows], taps)

        def scatter(x_rows: torch.Tensor) -> torch.Tensor:
            x = x_rows.new_zeros(b, *x_rows.shape[1:])
            x[rows] = x_rows
            return x

        out_lens[rows] = lens_rows
        return scatter(h_rows), out_lens, [scatter(t) for t in tapped_rows]

    # -- training -----------------------------------------------------------------

    def forward(self, batch: Any, loss_cfg: LossConfig, sampling_prob: float = 0.0) -> LossOutput:
        """Joint loss for a Batch (wavs, wav_lens, tokens (B, U) padded with pad, token_lens).
        Every utterance must give at least one encoder frame (see ``encoded_lengths``)."""
        taps = loss_cfg.intermediate_ctc_layers if loss_cfg.intermediate_ctc_weight > 0 else ()
        enc = self.encode(batch.wavs, batch.wav_lens, taps)
        with torch.autograd.profiler.record_function("ctc_loss"):
            ctc = ctc_loss(enc.ctc_log_probs, enc.lens, batch.tokens, batch.token_lens,
                           self.specials["blank"])
            ctc_term, tapped = ctc, None
            if enc.tapped_ctc_log_probs:
                tapped = torch.stack([
                    ctc_loss(lp, enc.lens, batch.tokens, batch.token_lens, self.specials["blank"])
                    for lp in enc.tapped_ctc_log_probs]).mean()
                w = loss_cfg.intermediate_ctc_weight
                ctc_term = (1.0 - w) * ctc + w * tapped
        # attention branch: [bos] + y -> y + [eos]
        tokens_in, targets = self.decoder_io(batch.tokens, batch.token_lens)
        with torch.autograd.profiler.record_function("decoder"):
            logits = self.decoder(enc.memory, tokens_in, sampling_prob)
        nll = nll_loss(logits, targets, batch.token_lens + 1, self.specials["pad"],
                       loss_cfg.label_smoothing)
        loss = joint_loss(ctc_term, nll, loss_cfg.ctc_weight)
        ntokens = int((batch.token_lens + 1).sum())
        return LossOutput(loss, ctc.detach(), nll.detach(), ntokens,
                          None if tapped is None else tapped.detach())

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

    # -- the decoder's step interface (greedy and beam search drive these) ---------

    def init_state(self, memory: Memory) -> DecoderState:
        return self.decoder.init_state(memory)

    def step(self, tokens: torch.Tensor, state: DecoderState, memory: Memory
             ) -> tuple[torch.Tensor, DecoderState]:
        """Previous tokens (N,) -> (log_probs (N, V) float32, new state)."""
        return self.decoder.step(tokens, state, memory)

    def select_state(self, state: DecoderState, index: torch.Tensor) -> DecoderState:
        return self.decoder.select_state(state, index)

    def select_memory(self, memory: Memory, index: torch.Tensor) -> Memory:
        return self.decoder.select_memory(memory, index)

    def repeat_memory(self, memory: Memory, k: int) -> Memory:
        return self.decoder.repeat_memory(memory, k)

    def alignment(self, state: DecoderState) -> torch.Tensor:
        """Attention weights over frames (N, T') of the last step."""
        return self.decoder.alignment(state)

    def teacher_forced(self, memory: Memory, tokens_in: torch.Tensor) -> torch.Tensor:
        """Logits (N, U, V) for whole token sequences tokens_in (N, U) starting with bos."""
        return self.decoder(memory, tokens_in)
