"""The model directory: everything needed to rebuild a trained recogniser, and nothing executable.

Layout::

    model/
      config.yaml         a ModelDescription: format, earshot_version, model (front end,
                          encoder, decoder), tokenizer, default decoding, and a card
                          (corpus, hours, dev WER/CER, epochs, parameters)
      tokenizer/          Tokenizer.save output
      model.safetensors   weights, the front end's statistics included (they are buffers)
      checksums.sha256    SHA-256 of each file above, checked on load (earshot.integrity)

It describes the model, not the run that made it: no data paths, no optimizer.
Directories written by earshot 0.1 (format 1: an ExperimentConfig, front-end statistics
at ``normalizer.*``) load unchanged. ``save_model_dir`` writes a complete new directory
beside the target and renames it into place, so a reader never sees a half-written model.
``load_model_dir`` reads YAML, the tokenizer files and safetensors only: loading cannot
run code (no pickle).

>>> # description, tokenizer, model = load_model_dir("exp/run/model")
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from earshot.config import (MODEL_DIR_FORMAT, ExperimentConfig, ModelCard, ModelDescription,
                            load_config, read_yaml, save_config)
from earshot.errors import ConfigError, EarshotError
from earshot.integrity import verify_checksums, write_checksums

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "model.safetensors"

# Format 1 -> 2: the front end became a part of its own (``frontend.``).
_RENAMED_V1 = {"normalizer.": "frontend.normalizer."}


def tokenizer_specials(tokenizer) -> dict[str, int]:
    """The named special ids the model needs (blank, pad, unk, bos, eos)."""
    return dict(tokenizer.special_ids)


def build_model(cfg: ExperimentConfig | ModelDescription, tokenizer) -> torch.nn.Module:
    """A freshly initialised EncoderDecoderASR sized for ``tokenizer``."""
    from earshot.models.asr import EncoderDecoderASR

    return EncoderDecoderASR(cfg.model, tokenizer.vocab_size, tokenizer_specials(tokenizer))


def describe(cfg: ExperimentConfig | ModelDescription, card: ModelCard | None = None) -> ModelDescription:
    """The model-directory description of a training config (run settings left out)."""
    import earshot

    old_card = cfg.card if isinstance(cfg, ModelDescription) else ModelCard()
    return ModelDescription(MODEL_DIR_FORMAT, earshot.__version__, cfg.model, cfg.tokenizer,
                            cfg.decode, card if card is not None else old_card)


def save_model_dir(directory: str | Path, cfg: ExperimentConfig | ModelDescription, tokenizer,
                   model: torch.nn.Module, card: ModelCard | None = None) -> Path:
    """Write description, tokenizer and weights to ``directory``, replacing it as a whole.
    The description is the model's own portable one (an ssl encoder's architecture, not
    the checkpoint path it was first loaded from), so the directory stands alone."""
    cfg = dataclasses.replace(cfg, model=model.portable_config(cfg.model))
    with staged_directory(directory) as staging:
        save_config(describe(cfg, card), staging / CONFIG_FILE)
        tokenizer.save(staging / TOKENIZER_DIR)
        save_file(_plain_weights(model), str(staging / WEIGHTS_FILE))
    return Path(directory)


@contextlib.contextmanager
def staged_directory(directory: str | Path):
    """Yield an empty staging folder next to ``directory``; when the block ends without an
    error it replaces ``directory`` as a whole, otherwise it is removed. Readers see the
    old directory or the new one, never a half-written one, and the new one carries a
    checksum manifest of what the block wrote. Folders a killed earlier save left
    (``.NAME.tmp-*``, ``.NAME.old-*``) are removed first."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):
        for stale in directory.parent.glob(f".{directory.name}.{kind}-*"):
            log.warning("%s: removing what a killed save of %s left behind", stale, directory)
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield staging
        write_checksums(staging)
        _swap_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ConfigError naming the file when it is truncated,
    not safetensors (a pickle put in its place is never unpickled), or holds a nan/inf."""
    path = Path(path)
    try:
        weights = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors' own error type, OSError, ...
        raise ConfigError(f"{path}: not a readable safetensors file (truncated, or not "
                          f"safetensors: {str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    bad = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ConfigError(f"{path}: {len(bad)} weight tensor(s) hold nan or inf (e.g. {bad[0]}); "
                          f"the model diverged or the file is damaged")
    return weights


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu"):
    """Rebuild ``(description, tokenizer, model)`` from a model directory (any format);
    the model is in eval mode."""
    from earshot.tokenizer import load_tokenizer

    directory = Path(directory)
    check_model_dir(directory)
    verify_checksums(directory)
    description, version = read_description(directory / CONFIG_FILE)
    tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    model = build_model(description, tokenizer)
    weights = upgrade_weights(read_weights(directory / WEIGHTS_FILE), version)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{directory / WEIGHTS_FILE}: weights do not fit the model described "
                          f"by {directory / CONFIG_FILE}: {err}") from None
    return description, tokenizer, model.to(device).eval()


def read_description(path: Path) -> tuple[ModelDescription, int]:
    """The ModelDescription in ``path`` and the format it was written in."""
    data = read_yaml(path)
    version = data.get("format", 1)
    if version == 1:  # earshot 0.1: the whole ExperimentConfig of the run
        return describe(load_config(path)), 1
    if version != MODEL_DIR_FORMAT:
        raise ConfigError(f"{path}: model directory format {version!r} is not one this earshot "
                          f"reads (1 or {MODEL_DIR_FORMAT}); a newer release wrote it?")
    return load_config(path, cls=ModelDescription), version


def upgrade_weights(weights: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """State-dict names of an older format renamed to today's."""
    if version >= MODEL_DIR_FORMAT:
        return weights
    out = {}
    for name, value in weights.items():
        for old, new in _RENAMED_V1.items():
            if name.startswith(old):
                name = new + name[len(old):]
        out[name] = value
    return out


def check_model_dir(directory: str | Path, deep: bool = False) -> None:
    """Raise a clear EarshotError unless ``directory`` is a complete model directory;
    ``deep`` also checks the files against their checksums and reads the weights (what
    loading would refuse, found before minutes of other work)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EarshotError(f"{directory}: model directory not found")
    wanted = [(CONFIG_FILE, Path.is_file), (TOKENIZER_DIR, Path.is_dir), (WEIGHTS_FILE, Path.is_file)]
    missing = [name for name, exists in wanted if not exists(directory / name)]
    if missing:
        raise EarshotError(f"{directory}: not a model directory, missing {', '.join(missing)} "
                           f"(expected {CONFIG_FILE}, {TOKENIZER_DIR}/, {WEIGHTS_FILE})")
    if deep:
        verify_checksums(directory)
        read_description(directory / CONFIG_FILE)
        read_weights(directory / WEIGHTS_FILE)


@torch.no_grad()
def init_from_model_dir(model: torch.nn.Module, cfg: ExperimentConfig, tokenizer,
                        directory: str | Path) -> dict[str, list[str]]:
    """Start ``model`` (built for ``cfg`` and ``tokenizer``) from a trained model directory.

    For fine-tuning and for moving a model to another corpus. A tensor is copied when the
    pretrained model has one of the same name and shape. Token-indexed tensors (as the
    model's parts declare them: embedding, output layer, CTC head) are copied row by row
    for the tokens both vocabularies share, so the new tokenizer may hold other tokens.
    The front end's corpus statistics are not copied: they belong to the new training set. Returns the names ``copied``, ``token_rows`` (copied in
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
    by_token, statistics = set(model.token_indexed_names), set(model.statistics_names)
    source = src_model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "token_rows": [], "skipped": []}
    for name, value in model.state_dict().items():
        old = source.get(name)
        if name in statistics or old is None:
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
