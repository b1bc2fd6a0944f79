"""What the training engine (``earshot.train.engine``) trains, one module a command:

- ``asr``: ``earshot train``, joint CTC/attention speech recognition, exported as a model
  directory;
- ``lm``: ``earshot train-lm``, the RNN language model for shallow fusion, exported as an
  LM directory;
- ``pretrain``: ``earshot pretrain``, self-supervised wav2vec 2.0 on unlabeled audio,
  exported as a transformers checkpoint directory.

Each is a ``Task`` subclass plus the function that loads the data, builds the model and
its ``Run`` and calls ``engine.fit``. The helpers here are shared by the tasks that
train on cuts (ASR and pretraining).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lhotse import CutSet

    from earshot.config import DataConfig, PretrainDataConfig
    from earshot.data.batching import Batch

log = logging.getLogger(__name__)


def drop_unbatchable(cuts: CutSet, data: DataConfig | PretrainDataConfig, where: str) -> CutSet:
    """Training cuts without those over ``data.max_utterance_duration`` or over the batch
    budget ``data.max_duration`` (either would be a batch of its own, beyond what the
    budget was sized for): each kind is counted in a warning naming a few of them."""
    from earshot.data.batching import drop_long_cuts

    # one pass over the metadata (a lazy manifest may hold millions of cuts) for both limits
    kept, longer = drop_long_cuts(cuts, min(data.max_utterance_duration, data.max_duration))
    for key in ("max_utterance_duration", "max_duration"):
        limit = getattr(data, key)
        over = [c for c in longer if c.duration > limit]
        longer = [c for c in longer if c.duration <= limit]
        if over:
            longest = sorted(over, key=lambda c: -c.duration)
            shown = ", ".join(f"'{c.id}' ({c.duration:.1f}s)" for c in longest[:3])
            log.warning("%s: left out %d cuts longer than data.%s=%gs: %s%s", where, len(over),
                        key, limit, shown, " ..." if len(over) > 3 else "")
    return kept


def drop_short_rows(batch: Batch, frames: torch.Tensor, minimum: int, why: str) -> Batch | None:
    """The batch without the rows whose ``frames`` (B,) are below ``minimum``, each warned
    about with its id, samples and frames followed by ``why``; None when none is left."""
    short = (frames < minimum).nonzero(as_tuple=True)[0].tolist()
    if not short:
        return batch
    for i in short:
        log.warning("skipping utterance '%s': %d samples give %d %s", batch.ids[i],
                    int(batch.wav_lens[i]), int(frames[i]), why)
    keep = (frames >= minimum).nonzero(as_tuple=True)[0]
    return batch.select(keep) if len(keep) else None
