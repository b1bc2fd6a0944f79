"""The model factory: a fresh recogniser from its description, or one started from a trained
model directory's weights (fine-tuning, moving to another corpus).

>>> # model = build_model(cfg, tokenizer)            # an EncoderDecoderASR, fresh weights
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from earshot.config import ExperimentConfig, ModelDescription
from earshot.models.asr import EncoderDecoderASR

if TYPE_CHECKING:
    from earshot.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def tokenizer_specials(tokenizer: Tokenizer) -> dict[str, int]:
    """The named special ids the model needs (blank, pad, unk, bos, eos)."""
    return dict(tokenizer.special_ids)


def build_model(cfg: ExperimentConfig | ModelDescription, tokenizer: Tokenizer) -> EncoderDecoderASR:
    """A freshly initialised EncoderDecoderASR sized for ``tokenizer``."""
    return EncoderDecoderASR(cfg.model, tokenizer.vocab_size, tokenizer_specials(tokenizer))


@torch.no_grad()
def init_from_model_dir(model: EncoderDecoderASR, cfg: ExperimentConfig, tokenizer: Tokenizer,
                        directory: str | Path) -> dict[str, list[str]]:
    """Start ``model`` (built for ``cfg`` and ``tokenizer``) from a trained model directory.

    For fine-tuning and for moving a model to another corpus. A tensor is copied when the
    pretrained model has one of the same name and shape. Token-indexed tensors (as the
    model's parts declare them: embedding, output layer, CTC head) are copied row by row
    for the tokens both vocabularies share, so the new tokenizer may hold other tokens.
    The front end's corpus statistics are not copied: they belong to the new training set. Returns the names ``copied``, ``token_rows`` (copied in
    part) and ``skipped`` (left at their fresh initialisation).
    """
    from earshot.models.artifacts import load_model_dir

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
