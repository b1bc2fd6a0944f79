"""Training checkpoints: atomic save, keep-last/best-K, resume, and weight averaging.

A checkpoint holds everything needed to continue a run exactly: model, optimizer,
scheduler, grad scaler, sampler and RNG states and the TrainState. It is written to a
temporary file in the same directory, fsynced and renamed over the target, so a crash
leaves either the old file or the new one, never half of one. Loading uses
``torch.load(weights_only=True)``: the file holds tensors and plain Python values only
(RNG states are stored as tensors; the sampler state is lhotse's dict of plain values),
so a checkpoint cannot run code when it is read.

Epoch checkpoints live in ``<exp_dir>/checkpoints/epoch-0003.pt``.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from earshot.errors import EarshotError
from earshot.train.state import TrainState

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")
_TMP_MARK = ".tmp-"


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns; state dicts are ready for ``load_state_dict``."""

    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    sampler: dict | None
    train_state: TrainState
    rng: dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# RNG state as tensors


def capture_rng() -> dict[str, torch.Tensor]:
    """The state of Python's, NumPy's and torch's (CPU, CUDA) global generators, as tensors."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([np.nan if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor([pos, has_gauss, *keys.tolist()], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return rng


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    """Put the generators back in the state ``capture_rng`` saw."""
    py = rng["python"].tolist()
    gauss = float(rng["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if np.isnan(gauss) else gauss))
    pos, has_gauss, *keys = rng["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss,
                         float(rng["numpy_gauss"][0])))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        states = list(rng["cuda"])
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.warning("checkpoint has CUDA RNG state for %d devices, this machine has %d: "
                        "CUDA generators not restored", len(states), torch.cuda.device_count())


# ---------------------------------------------------------------------------
# save / load


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, model, optimizer, scheduler, scaler, sampler_state, train_state, rng) -> None:
    """Write one training checkpoint atomically.

    ``model`` is the bare module (not DDP-wrapped); ``scaler`` may be None;
    ``sampler_state`` is the lhotse sampler's ``state_dict()`` (or None);
    ``rng`` comes from ``capture_rng()``.
    """
    payload = {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "sampler": sampler_state,  # plain values; JSON would turn its int keys into strings
        "train_state": train_state.to_dict(),
        "rng": rng,
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise EarshotError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file; say which one
        raise EarshotError(f"{path}: not a readable earshot checkpoint ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise EarshotError(f"{path}: not an earshot checkpoint (format {FORMAT_VERSION} expected)")
    return Checkpoint(
        model=data["model"],
        optimizer=data["optimizer"],
        scheduler=data["scheduler"],
        scaler=data["scaler"],
        sampler=data["sampler"],
        train_state=TrainState.from_dict(data["train_state"]),
        rng=data["rng"],
    )


# ---------------------------------------------------------------------------
# the checkpoint directory


def checkpoint_path(ckpt_dir: str | Path, epoch: int) -> Path:
    return Path(ckpt_dir) / f"epoch-{epoch:04d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> dict[int, Path]:
    """Epoch -> path of every complete epoch checkpoint in ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return {}
    found = {}
    for path in ckpt_dir.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[max(found)] if found else None


def epochs_to_keep(state: TrainState, keep_last: int, keep_best: int) -> set[int]:
    """The last ``keep_last`` epochs plus the ``keep_best`` best ones (needed for averaging)."""
    epochs = [epoch for epoch, _ in state.history]
    last = set(sorted(epochs)[-keep_last:]) if keep_last > 0 else set()
    return last | set(state.best_epochs(keep_best))


def prune_checkpoints(ckpt_dir: str | Path, keep: set[int]) -> list[Path]:
    """Delete epoch checkpoints not in ``keep``; returns the removed paths."""
    removed = []
    for epoch, path in list_checkpoints(ckpt_dir).items():
        if epoch not in keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_partial(ckpt_dir: str | Path) -> list[Path]:
    """Delete temp files left by a save that was killed before its rename."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    stale = [p for p in ckpt_dir.iterdir() if p.name.startswith(".") and _TMP_MARK in p.name]
    for path in stale:
        log.warning("%s: removing an incomplete checkpoint left by an interrupted save", path)
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------
# averaging


def average_checkpoints(paths: list[str | Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights in ``paths``.

    Floating-point tensors are averaged (accumulated in float64); integer tensors
    (counters such as BatchNorm's ``num_batches_tracked``) are taken from the last file.
    """
    if not paths:
        raise EarshotError("average_checkpoints: no checkpoints given")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        weights = load_checkpoint(path).model
        if dtypes and set(weights) != set(dtypes):
            raise EarshotError(f"{path}: its parameters differ from {paths[0]}; cannot average")
        for name, value in weights.items():
            dtypes[name] = value.dtype
            if value.is_floating_point():
                total[name] = total.get(name, 0) + value.to(torch.float64)
            else:
                total[name] = value
    return {
        name: (value / len(paths)).to(dtypes[name]) if dtypes[name].is_floating_point else value
        for name, value in total.items()
    }
