"""Self-supervised wav2vec 2.0 pretraining on unlabeled audio (`earshot pretrain`).

The model is transformers' ``Wav2Vec2ForPreTraining`` (``pip install earshot[ssl]``):
a convolutional feature encoder, a Transformer over its frames and a Gumbel-softmax
product quantiser of the (unmasked) features. Spans of frames are masked before the
Transformer; at each masked frame the Transformer's output must pick the quantised
feature of that frame out of ``num_negatives`` distractors, the quantised features of
other masked frames of the same utterance (contrastive loss, InfoNCE with cosine
similarity over a temperature), while a diversity loss keeps the codebooks in use. The
Gumbel temperature decays per optimizer step from ``gumbel_max`` to ``gumbel_min``.
Both losses are means over masked frames.

Masks and negatives are drawn from torch's generator on the CPU, which the engine seeds
per batch, and torch's deterministic kernels are on while it trains: a resumed run ends
with exactly the parameters of the uninterrupted one. Training runs on
the engine of ``earshot train`` (``earshot.train.trainer.fit``): checkpoints inside and
between epochs, ``--resume``, precision, DDP, skipped updates, ``metrics.jsonl`` and
TensorBoard. The best epoch by dev loss (or the mean of the best ``train.average_best``)
is exported to ``<train.exp_dir>/model`` as a transformers checkpoint directory
(config.json, model.safetensors, preprocessor_config.json with the sampling rate) that
``model.encoder.path`` of an ssl encoder, or ``model.init_from`` of another pretraining
run, accepts.

Audio comes from CutSet manifests (transcripts are not needed) and/or folders of audio
files (``data.train`` lists them); without ``data.dev`` a seeded ``data.dev_fraction`` of
the pool is held out.

>>> from earshot.config import load_config, PretrainExperimentConfig   # doctest: +SKIP
>>> pretrain(load_config("recipes/an4/pretrain.yaml", cls=PretrainExperimentConfig))  # doctest: +SKIP
PosixPath('exp/an4_pretrain/model')
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from earshot.config import FeatureConfig, PretrainExperimentConfig, PretrainModelConfig
from earshot.errors import ConfigError
from earshot.frontends import WaveformFrontEnd
from earshot.masks import lengths_to_mask
from earshot.models.encoders.ssl import check_checkpoint_dir, import_transformers, span_mask
from earshot.train import trainer as engine
from earshot.train.state import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "model"
CARD_FILE = "earshot_pretraining.json"

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


def pretrain(cfg: PretrainExperimentConfig, resume: bool = False) -> Path:
    """Pretrain on the engine and export the best epoch(s); returns the checkpoint directory."""
    world, device, exp_dir, saved = engine.begin_run(cfg, resume)
    model = Wav2Vec2Pretrainer(cfg.model).to(device)  # (a bad architecture fails before data loads)
    train_cuts, dev_cuts = load_audio(cfg)
    run = build_run(cfg, exp_dir, world, device, model, train_cuts, dev_cuts)
    state = engine.restore(run, *saved) if saved is not None else TrainState(lr=run.scheduler.lr)
    with deterministic_algorithms():
        return engine.fit(run, state)


@contextlib.contextmanager
def deterministic_algorithms():
    """torch's deterministic kernels for the duration (the caller's setting after). The
    negatives are gathered by index, and the backward of that gather accumulates with
    atomic adds across CPU threads otherwise: two runs, or a run and its resumption,
    would drift apart by rounding."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def load_audio(cfg: PretrainExperimentConfig):
    """Training and dev CutSets: the pooled sources, over-long cuts left out (and counted),
    dev held out from the pool when none is given."""
    from earshot.data.manifests import load_audio_sources

    pool = engine.drop_unbatchable(load_audio_sources(cfg.data.train, "data.train"), cfg.data, "data.train")
    if cfg.data.dev:
        return pool, load_audio_sources(cfg.data.dev, "data.dev")
    if len(pool) < 2:
        raise ConfigError("config key 'data.train': needs at least 2 usable cuts to hold out a "
                          "dev set (or give data.dev)")
    ids = sorted(pool.ids)
    random.Random(cfg.train.seed).shuffle(ids)
    held = set(ids[:min(len(ids) - 1, max(1, round(cfg.data.dev_fraction * len(ids))))])
    log.info("holding out %d of %d cuts as the dev set (data.dev_fraction=%g)", len(held), len(ids),
             cfg.data.dev_fraction)
    return pool.filter(lambda c: c.id not in held), pool.filter(lambda c: c.id in held)


def build_run(cfg, exp_dir, world, device, model, train_cuts, dev_cuts) -> engine.Run:
    from earshot.data.batching import make_loader

    data, rate = cfg.data, cfg.model.sample_rate
    shard = {"world_size": world.world_size, "rank": world.rank}
    train_loader = make_loader(train_cuts, None, rate, data.max_duration, shuffle=True,
                               seed=cfg.train.seed, num_buckets=data.num_buckets,
                               num_workers=data.num_workers, keep_empty=True, **shard)
    dev_loader = make_loader(dev_cuts, None, rate, data.max_duration, shuffle=False,
                             num_buckets=data.num_buckets, num_workers=data.num_workers, even=False,
                             keep_empty=True, **shard)
    optimizer, scheduler, scaler = engine.build_optimization(cfg, model, device, train_loader)
    hours = sum(cut.duration for cut in train_cuts) / 3600
    log.info("wav2vec 2.0: %.2fM parameters; train: %d cuts (%.2f h); dev: %d cuts; device %s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(train_cuts), hours,
             len(dev_cuts), device)
    return engine.Run(cfg, exp_dir, world, device, None, model, model, optimizer, scheduler, scaler,
                      train_loader, dev_loader, hours, PretrainTask(cfg, model))


# ---------------------------------------------------------------------------
# the model


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

    def set_training_step(self, step: int) -> None:
        cfg = self.cfg
        self.net.set_gumbel_temperature(max(cfg.gumbel_max * cfg.gumbel_decay ** step, cfg.gumbel_min))

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
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


# ---------------------------------------------------------------------------
# the task


@dataclass(frozen=True)
class PretrainDevResult:
    loss: float  # per masked frame
    contrastive: float
    diversity: float
    perplexity: float  # of the codebook choices (higher: more codes in use)
    skipped: int = 0

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, "contrastive": self.contrastive, "diversity": self.diversity,
                "perplexity": self.perplexity}


class PretrainTask(engine.Task):
    """Contrastive + diversity loss of a Wav2Vec2Pretrainer on untranscribed cuts."""

    PARTS = ("contrastive", "diversity")
    AMOUNT = "audio_seconds"
    ROWS = "utterances"
    UNUSABLE = "too short for one masked span"

    def __init__(self, cfg: PretrainExperimentConfig, model: Wav2Vec2Pretrainer):
        self.cfg, self.model = cfg, model
        self.find_unused_parameters = bool(model.net.config.layerdrop)

    def usable(self, batch):
        span = self.cfg.model.mask_length
        return engine.drop_short_rows(batch, self.model.frames(batch.wav_lens), span,
                                      f"frames, fewer than one masked span (model.mask_length={span})")

    def unreadable(self, batch) -> int:
        return len(batch.dropped)

    def forward(self, model, batch, epoch: int, step: int):
        self.model.set_training_step(step)
        loss, contrastive, diversity, _ = model(batch.wavs, batch.wav_lens)
        return loss, [contrastive, diversity]

    def amount(self, batch) -> float:
        return float(batch.wav_lens.sum()) / self.model.sample_rate

    @torch.no_grad()
    def evaluate(self, run) -> PretrainDevResult:
        """Dev losses with masks and negatives drawn from a generator seeded per batch, so
        every epoch is scored on the same task."""
        model = run.model
        was_training = model.training
        model.eval()
        sums, skipped = np.zeros(5), 0
        for i, batch in enumerate(run.dev_loader):
            rows = len(batch)
            skipped += len(batch.dropped)
            batch = self.usable(batch) if rows else None
            skipped += rows - (len(batch) if batch is not None else 0)
            if batch is None:
                continue
            batch = batch.to(run.device)
            with torch.random.fork_rng(devices=[]), engine.autocast(run.cfg.train.precision, run.device):
                torch.manual_seed(self.cfg.train.seed * 100003 + i)
                values = model(batch.wavs, batch.wav_lens)
            sums += [*(len(batch) * float(v) for v in values), len(batch)]
        model.train(was_training)
        totals = engine.reduce_sums(run, np.append(sums, skipped))
        n = max(totals[4], 1)
        loss, contrastive, diversity, perplexity = (totals[:4] / n).tolist()
        return PretrainDevResult(loss, contrastive, diversity, perplexity, int(totals[5]))

    def export(self, run, state: TrainState) -> Path:
        epochs = engine.load_best_epochs(run, state)
        dev = self.evaluate(run)
        out = run.exp_dir / CHECKPOINT_DIR
        if run.dist.is_main:
            save_checkpoint_dir(out, self.model, run, epochs, dev)
            log.info("exported epoch(s) %s to %s (dev loss %.4f)", ", ".join(map(str, epochs)), out,
                     dev.loss)
        engine.barrier(run.dist)
        return out


def save_checkpoint_dir(out: Path, model: Wav2Vec2Pretrainer, run, epochs: list[int],
                        dev: PretrainDevResult) -> Path:
    """A transformers checkpoint directory, written whole or not at all."""
    import earshot
    from earshot.modeldir import staged_directory

    cfg = model.cfg
    with staged_directory(out) as staging:
        model.net.save_pretrained(staging)
        (staging / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "sampling_rate": cfg.sample_rate, "padding_value": 0.0,
            "do_normalize": cfg.waveform_norm == "utterance", "return_attention_mask": True,
        }, indent=2) + "\n")
        card = {"earshot_version": earshot.__version__,
                "corpus": run.cfg.data.corpus or Path(run.cfg.data.train[0]).name.split(".")[0],
                "train_hours": round(run.train_hours, 3), "epochs": run.cfg.train.epochs,
                "exported_epochs": epochs, "dev": {k: round(v, 5) for k, v in dev.metrics().items()
                                                   if math.isfinite(v)},
                "parameters": sum(p.numel() for p in model.parameters())}
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return out
