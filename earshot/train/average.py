"""Post-training averaging (``earshot average``): a model directory from the mean of an ASR
run's saved end-of-epoch checkpoints, chosen after training (the best N by the run's dev
metric, or the last N), with a card measured on the run's dev manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from earshot.config import load_config
from earshot.errors import ConfigError
from earshot.models.artifacts import save_model_dir
from earshot.models.factory import build_model
from earshot.train import checkpoint as ckpt
from earshot.train.environment import CHECKPOINT_DIR, CONFIG_FILE
from earshot.train.tasks.asr import TOKENIZER_DIR, model_card, score_dev

log = logging.getLogger(__name__)


def average_experiment(exp_dir: str | Path, best: int = 0, last: int = 0,
                       out: str | Path | None = None, device: str = "cpu") -> Path:
    """Write a model directory from a run's saved end-of-epoch checkpoints: the mean of the
    ``best`` N by the run's dev metric, or of the ``last`` N epochs. The card's dev WER/CER
    are measured on the run's dev manifest with exactly those weights."""
    from earshot.data.batching import make_loader
    from earshot.data.manifests import load_cuts
    from earshot.tokenizer import load_tokenizer

    if (best > 0) == (last > 0):
        raise ConfigError("give exactly one of --best N or --last N (N >= 1)")
    exp_dir = Path(exp_dir)
    cfg = load_config(exp_dir / CONFIG_FILE)
    ckpt_dir = exp_dir / CHECKPOINT_DIR
    available = ckpt.list_checkpoints(ckpt_dir)
    if not available:
        raise ConfigError(f"{ckpt_dir}: no end-of-epoch checkpoints to average")
    state = ckpt.load_checkpoint(available[max(available)]).train_state
    if best:
        epochs = [e for e in state.best_epochs(len(state.history)) if e in available][:best]
    else:
        epochs = sorted(available)[-last:]
    wanted = best or last
    if len(epochs) < wanted:
        raise ConfigError(f"{ckpt_dir}: {wanted} epochs asked for, but only epochs "
                          f"{', '.join(map(str, sorted(available)))} are kept (train.keep_last and "
                          f"train.average_best decide how many)")
    tokenizer = load_tokenizer(exp_dir / TOKENIZER_DIR)
    model = build_model(cfg, tokenizer).to(device)
    model.load_state_dict(ckpt.average_checkpoints([available[e] for e in epochs]))
    dev_cuts = load_cuts(cfg.data.dev)
    loader = make_loader(dev_cuts, tokenizer, model.sample_rate, cfg.data.max_duration,
                         shuffle=False, num_buckets=cfg.data.num_buckets, even=False)
    dev = score_dev(model, tokenizer, loader, cfg, torch.device(device))
    hours = sum(cut.duration for cut in load_cuts(cfg.data.train)) / 3600
    card = model_card(cfg, model, dev, hours, epochs, state.epoch)
    out = Path(out) if out else exp_dir / f"model-{'best' if best else 'last'}{wanted}"
    save_model_dir(out, cfg, tokenizer, model.cpu(), card)
    log.info("averaged epoch(s) %s into %s (dev WER %.2f CER %.2f)",
             ", ".join(map(str, epochs)), out, dev.wer, dev.cer)
    return out
