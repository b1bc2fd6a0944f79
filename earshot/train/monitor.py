"""Watching a run: TensorBoard scalars, attention-alignment plots, and training curves.

Everything here is optional and degrades to a log line: TensorBoard needs the
``tensorboard`` package and plots need ``matplotlib`` (both in ``pip install
earshot[monitor]``). The numbers themselves always go to ``metrics.jsonl``.

- ``TensorBoard(exp_dir)``: scalars from every metrics row into ``EXP_DIR/tensorboard/``.
- ``alignments(model, batch)``: the decoder's attention over encoder frames while it is
  fed each reference transcript (teacher forcing), one (tokens, frames) matrix per
  utterance; ``plot_alignments`` saves each as ``EXP_DIR/plots/align-eNNN-ID.png``.
- ``plot_curves(exp_dir)``: train/dev loss, dev WER/CER and the learning rate from
  ``metrics.jsonl`` to ``EXP_DIR/plots/curves.png`` (``earshot plot EXP_DIR``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from earshot.errors import EarshotError

if TYPE_CHECKING:
    from earshot.data.batching import Batch
    from earshot.models.asr import EncoderDecoderASR
    from earshot.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class TensorBoard:
    """Scalars from metrics rows; does nothing when disabled or not installed."""

    def __init__(self, exp_dir: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed (pip install earshot[monitor]): "
                     "metrics go to metrics.jsonl only")
            return
        self.writer = SummaryWriter(str(Path(exp_dir) / TENSORBOARD_DIR))

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        prefix = "train" if row.get("kind") == "step" else "epoch"
        for key, value in row.items():
            if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def alignments(model: EncoderDecoderASR, batch: Batch, tokenizer: Tokenizer
               ) -> list[tuple[str, str, torch.Tensor]]:
    """(id, text, weights (U + 1, T')) per utterance: attention while teacher forcing the
    reference (bos first; the last row is the step that should emit eos)."""
    was_training = model.training
    model.eval()
    try:
        enc = model.encode(batch.wavs, batch.wav_lens)
        tokens = batch.tokens
        state = model.init_state(enc.memory)
        inputs = torch.cat([torch.full_like(tokens[:, :1], tokenizer.bos_id), tokens], dim=1)
        rows = []
        for u in range(inputs.shape[1]):
            _, state = model.step(inputs[:, u], state, enc.memory)
            rows.append(model.alignment(state).float().cpu())
        weights = torch.stack(rows, dim=1)  # (N, U + 1, T')
    finally:
        model.train(was_training)
    out = []
    for i, utt_id in enumerate(batch.ids):
        n_tok, n_frames = int(batch.token_lens[i]) + 1, int(enc.lens[i])
        out.append((utt_id, batch.texts[i], weights[i, :n_tok, :n_frames]))
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alignments(items: list[tuple[str, str, torch.Tensor]], out_dir: Path, epoch: int) -> list[Path]:
    """One PNG per utterance; [] (and a log line) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        log.info("matplotlib is not installed (pip install earshot[monitor]): no alignment plots")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for utt_id, text, weights in items:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.imshow(weights.numpy(), aspect="auto", origin="lower", interpolation="nearest")
        ax.set_xlabel("encoder frame")
        ax.set_ylabel("decoder step")
        ax.set_title(f"epoch {epoch}: {utt_id}\n{text[:80]}", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"align-e{epoch:03d}-{_SAFE.sub('_', utt_id)[:60]}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a last line cut short by a kill is left out)."""
    if not path.is_file():
        raise EarshotError(f"{path}: no metrics file (is this an experiment directory?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: not a JSON line; skipped", path, number)
    return rows


def plot_curves(exp_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss (per step and per epoch, train and dev), dev WER/CER and lr against steps."""
    exp_dir = Path(exp_dir)
    rows = read_metrics(exp_dir / "metrics.jsonl")
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind", "epoch") == "epoch" and "dev_loss" in r]
    if not steps and not epochs:
        raise EarshotError(f"{exp_dir / 'metrics.jsonl'}: no rows to plot yet")
    plt = _pyplot()
    if plt is None:
        raise EarshotError("earshot plot needs matplotlib: pip install earshot[monitor]")
    fig, (loss_ax, wer_ax, lr_ax) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    if steps:
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6, alpha=0.5,
                     label="train (step)")
    if epochs:
        x = [r["step"] for r in epochs]
        loss_ax.plot(x, [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        loss_ax.plot(x, [r["dev_loss"] for r in epochs], "o-", label="dev")
        for key, label in (("dev_wer", "dev WER"), ("dev_cer", "dev CER")):
            if key in epochs[0]:  # (a language model has none)
                wer_ax.plot(x, [r[key] for r in epochs], "o-", label=label)
    source = steps or epochs
    lr_ax.plot([r["step"] for r in source], [r["lr"] for r in source])
    loss_ax.set_ylabel("loss")
    wer_ax.set_ylabel("error rate (%)")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    for ax in (loss_ax, wer_ax):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(str(exp_dir), fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else exp_dir / PLOTS_DIR / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
