"""Model and language-model directories: everything needed to rebuild a trained model, and
nothing executable.

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

A language-model directory (``earshot train-lm``) holds config.yaml (an
LMExperimentConfig), tokenizer/ and model.safetensors, with the same checksum manifest.

>>> # description, tokenizer, model = load_model_dir("exp/run/model")
>>> # lm = load_lm("exp/lm")
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from earshot.config import (MODEL_DIR_FORMAT, ExperimentConfig, LMExperimentConfig, ModelCard,
                            ModelDescription, load_config, read_yaml, save_config)
from earshot.errors import ConfigError, EarshotError
from earshot.integrity import CHECKSUM_FILE, verify_checksums, write_checksums
from earshot.models.factory import build_model

if TYPE_CHECKING:
    from earshot.models.asr import EncoderDecoderASR
    from earshot.models.lm import RNNLM
    from earshot.models.wav2vec2_pretraining import Wav2Vec2Pretrainer
    from earshot.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "model.safetensors"
PRETRAINING_CARD_FILE = "earshot_pretraining.json"  # beside a pretrained transformers checkpoint

# Format 1 -> 2: the front end became a part of its own (``frontend.``).
_RENAMED_V1 = {"normalizer.": "frontend.normalizer."}


def describe(cfg: ExperimentConfig | ModelDescription, card: ModelCard | None = None) -> ModelDescription:
    """The model-directory description of a training config (run settings left out)."""
    import earshot

    old_card = cfg.card if isinstance(cfg, ModelDescription) else ModelCard()
    return ModelDescription(MODEL_DIR_FORMAT, earshot.__version__, cfg.model, cfg.tokenizer,
                            cfg.decode, card if card is not None else old_card)


def save_model_dir(directory: str | Path, cfg: ExperimentConfig | ModelDescription,
                   tokenizer: Tokenizer, model: EncoderDecoderASR,
                   card: ModelCard | None = None) -> Path:
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
def staged_directory(directory: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder next to ``directory``; when the block ends without an
    error it replaces ``directory`` as a whole, otherwise it is removed. Readers see the
    old directory or the new one, never a half-written one, and the new one carries a
    checksum manifest of what the block wrote, with the permissions the user's umask gives
    new files. Folders a killed earlier save left (``.NAME.tmp-*``, ``.NAME.old-*``) are
    removed first. A ``directory`` that exists but was not written this way (a file, or a
    folder of the user's) is never replaced: ConfigError."""
    directory = Path(directory)
    check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):
        for stale in directory.parent.glob(f".{directory.name}.{kind}-*"):
            log.warning("%s: removing what a killed save of %s left behind", stale, directory)
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield staging
        write_checksums(staging)
        _apply_umask(staging)
        _swap_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_replaceable(directory: Path) -> None:
    """A ConfigError unless ``directory`` is absent, empty, or a directory earshot wrote
    (a checksum manifest, or an older model or pretraining directory's files)."""
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir():
        raise ConfigError(f"{directory}: exists and is not a directory; earshot will not replace it")
    names = {p.name for p in directory.iterdir()}
    ours = (CHECKSUM_FILE in names or {CONFIG_FILE, WEIGHTS_FILE} <= names
            or PRETRAINING_CARD_FILE in names)
    if names and not ours:
        shown = ", ".join(sorted(names)[:3])
        raise ConfigError(f"{directory}: exists and holds files earshot did not write ({shown}); "
                          f"earshot will not replace it: choose another output directory")


def _apply_umask(root: Path) -> None:
    """Permissions as a new file or folder gets them (the staging folder is private)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


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


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[ModelDescription, Tokenizer, EncoderDecoderASR]:
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


# ---------------------------------------------------------------------------
# language-model directories


def save_lm_dir(out_dir: str | Path, lm: RNNLM, cfg: LMExperimentConfig, tokenizer: Tokenizer) -> Path:
    """Write config.yaml, tokenizer/ and model.safetensors to ``out_dir``, atomically (a
    crash leaves the previous directory, or none, never half of one)."""
    with staged_directory(out_dir) as staging:
        save_config(cfg, staging / "config.yaml")
        tokenizer.save(staging / "tokenizer")
        weights = {k: v.detach().cpu().contiguous() for k, v in lm.state_dict().items()}
        save_file(weights, str(staging / "model.safetensors"))
    return Path(out_dir)


def load_lm(lm_dir: str | Path, device: str | torch.device = "cpu") -> RNNLM:
    """Rebuild an RNNLM from an LM directory (see save_lm_dir), or from the ``train-lm``
    experiment directory that holds one in ``model/``; ``.tokenizer`` attached."""
    from earshot.tokenizer import load_tokenizer

    d = Path(lm_dir)
    if (d / "manifest.json").exists():  # an ONNX export (earshot export --lm)
        from earshot.export.runtime import OnnxLM

        return OnnxLM.load(d)
    if not (d / "model.safetensors").exists() and (d / "model" / "model.safetensors").exists():
        d = d / "model"  # the train-lm experiment directory: its exported LM
    for name in ("config.yaml", "tokenizer", "model.safetensors"):
        if not (d / name).exists():
            raise ConfigError(f"{d}: not a language model directory (missing {name})")
    verify_checksums(d)
    cfg = load_config(d / "config.yaml", cls=LMExperimentConfig)
    tokenizer = load_tokenizer(d / "tokenizer")
    from earshot.models.lm import RNNLM

    lm = RNNLM(cfg.model, tokenizer.vocab_size)
    lm.load_state_dict(read_weights(d / "model.safetensors"))
    lm.tokenizer = tokenizer
    return lm.to(device).eval()


# ---------------------------------------------------------------------------
# pretrained encoders (``earshot pretrain``)


def save_transformers_dir(out: str | Path, model: Wav2Vec2Pretrainer, card: dict) -> Path:
    """A transformers checkpoint directory (config.json, weights, preprocessor_config.json
    with the sampling rate) that ``model.encoder.path`` accepts, with ``card`` in
    ``PRETRAINING_CARD_FILE``; written whole or not at all."""
    cfg = model.cfg
    with staged_directory(out) as staging:
        model.save_backbone(staging)
        (staging / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "sampling_rate": cfg.sample_rate, "padding_value": 0.0,
            "do_normalize": cfg.waveform_norm == "utterance", "return_attention_mask": True,
        }, indent=2) + "\n")
        (staging / PRETRAINING_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return Path(out)
