"""The model directory: everything needed to rebuild a trained recogniser, and nothing executable.

Layout::

    model/
      config.yaml         the ExperimentConfig it was trained with
      tokenizer/          Tokenizer.save output
      model.safetensors   weights, CMVN statistics included (they are buffers)

``save_model_dir`` writes a complete new directory beside the target and renames it into
place, so a reader never sees a half-written model. ``load_model_dir`` reads YAML, the
tokenizer files and safetensors only: loading cannot run code (no pickle).

>>> # cfg, tokenizer, model = load_model_dir("exp/run/model")
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from earshot.config import ExperimentConfig, load_config, save_config
from earshot.errors import ConfigError, EarshotError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "model.safetensors"


def tokenizer_specials(tokenizer) -> dict[str, int]:
    """The named special ids the model needs (blank, pad, unk, bos, eos)."""
    return dict(tokenizer.special_ids)


def build_model(cfg: ExperimentConfig, tokenizer) -> torch.nn.Module:
    """A freshly initialised EncoderDecoderASR sized for ``tokenizer``."""
    from earshot.models.asr import EncoderDecoderASR

    return EncoderDecoderASR(cfg.model, tokenizer.vocab_size, tokenizer_specials(tokenizer))


def save_model_dir(directory: str | Path, cfg: ExperimentConfig, tokenizer, model: torch.nn.Module) -> Path:
    """Write config, tokenizer and weights to ``directory``, replacing it as a whole."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_config(cfg, staging / CONFIG_FILE)
        tokenizer.save(staging / TOKENIZER_DIR)
        save_file(_plain_weights(model), str(staging / WEIGHTS_FILE))
        _swap_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _plain_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights); a copy each keeps
    # every name loadable with a plain load_state_dict.
    return {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}


def _swap_into_place(staging: Path, directory: Path) -> None:
    # rename() cannot replace a non-empty directory, so the old one steps aside first.
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{staging.name}")
        directory.rename(old)
    staging.rename(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu"):
    """Rebuild ``(cfg, tokenizer, model)`` from a model directory; the model is in eval mode."""
    from earshot.tokenizer import load_tokenizer

    directory = Path(directory)
    check_model_dir(directory)
    cfg = load_config(directory / CONFIG_FILE)
    tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    model = build_model(cfg, tokenizer)
    weights = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{directory / WEIGHTS_FILE}: weights do not fit the model described "
                          f"by {directory / CONFIG_FILE}: {err}") from None
    return cfg, tokenizer, model.to(device).eval()


def check_model_dir(directory: str | Path) -> None:
    """Raise a clear EarshotError unless ``directory`` is a complete model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EarshotError(f"{directory}: model directory not found")
    wanted = [(CONFIG_FILE, Path.is_file), (TOKENIZER_DIR, Path.is_dir), (WEIGHTS_FILE, Path.is_file)]
    missing = [name for name, exists in wanted if not exists(directory / name)]
    if missing:
        raise EarshotError(f"{directory}: not a model directory, missing {', '.join(missing)} "
                           f"(expected {CONFIG_FILE}, {TOKENIZER_DIR}/, {WEIGHTS_FILE})")


@torch.no_grad()
def init_from_model_dir(model: torch.nn.Module, cfg: ExperimentConfig, tokenizer,
                        directory: str | Path) -> dict[str, list[str]]:
    """Start ``model`` (built for ``cfg`` and ``tokenizer``) from a trained model directory.

    For fine-tuning and for moving a model to another corpus. A tensor is copied when the
    pretrained model has one of the same name and shape. Token-indexed tensors (embedding,
    output layer, CTC head) are copied row by row for the tokens both vocabularies share,
    so the new tokenizer may hold other tokens. The CMVN statistics are not copied: they
    belong to the new training set. Returns the names ``copied``, ``token_rows`` (copied in
    part) and ``skipped`` (left at their fresh initialisation).
    """
    src_cfg, src_tokenizer, src_model = load_model_dir(directory)
    changed = [f.name for f in fields(cfg.model.features)
               if getattr(cfg.model.features, f.name) != getattr(src_cfg.model.features, f.name)]
    if changed:
        log.warning("%s: features differ (%s); the encoder will see other inputs than it was "
                    "trained on", directory, ", ".join(changed))
    src_row = {token: i for i, token in enumerate(src_tokenizer.tokens)}
    shared = [(i, src_row[t]) for i, t in enumerate(tokenizer.tokens) if t in src_row]
    dst_rows = torch.tensor([i for i, _ in shared], dtype=torch.long)
    src_rows = torch.tensor([j for _, j in shared], dtype=torch.long)
    by_token = set(getattr(model, "TOKEN_INDEXED", ()))
    source = src_model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "token_rows": [], "skipped": []}
    for name, value in model.state_dict().items():
        old = source.get(name)
        if name.startswith("normalizer.") or old is None:
            kind = "skipped"
        elif name in by_token:
            kind = "token_rows" if old.shape[1:] == value.shape[1:] and shared else "skipped"
        else:
            kind = "copied" if old.shape == value.shape else "skipped"
        if kind == "copied":
            value.copy_(old)
        elif kind == "token_rows":
            value[dst_rows] = old[src_rows].to(value)
        report[kind].append(name)
    log.info("initialised from %s: %d tensors copied whole, %d row by row (%d of %d tokens "
             "shared); left fresh: %s", directory, len(report["copied"]), len(report["token_rows"]),
             len(shared), len(tokenizer.tokens), ", ".join(report["skipped"]) or "none")
    return report
