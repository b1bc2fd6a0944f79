"""Training checkpoints: atomic save, keep-last/best-K, resume with fallback, averaging.

A checkpoint holds everything needed to continue a run exactly: model, optimizer,
scheduler and grad scaler states and the TrainState, whose ``epoch_batches`` says how far
into the next epoch it was written. No generator state is stored: every random draw of
a training step comes from generators seeded by (seed, rank, epoch, batch) (see
``earshot.train.environment.seed_step``), so the position alone replays the randomness.

A checkpoint is written to a temporary file in the same directory, fsynced and renamed
over the target, so a crash leaves either the old file or the new one, never half of
one. A ``NAME.sha256`` beside it holds the file's SHA-256: a checkpoint altered or
damaged after it was written is refused by name (and resume falls back past it). Loading uses ``torch.load(weights_only=True)``: the file holds tensors and plain
Python values only, so a checkpoint cannot run code when it is read.

Files in ``<exp_dir>/checkpoints/``: ``epoch-0003.pt`` at the end of epoch 3, and
``epoch-0004-batch-000150.pt`` inside epoch 4 after 150 of its batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from earshot.errors import ConfigError, EarshotError
from earshot.integrity import TMP_MARK, atomic_write, file_sha256
from earshot.train.state import TrainState

if TYPE_CHECKING:
    from earshot.train.schedulers import Scheduler

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1 (earshot 0.2) also held RNG and lhotse sampler states
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")
_MID_EPOCH_FILE = re.compile(r"^epoch-(\d+)-batch-(\d+)\.pt$")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns; state dicts are ready for ``load_state_dict``."""

    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    train_state: TrainState


# ---------------------------------------------------------------------------
# save / load


def atomic_torch_save(obj: object, path: str | Path,
                      before_rename: Callable[[], None] | None = None) -> None:
    """``torch.save`` to ``path`` atomically (see ``atomic_write``), then its SHA-256 to
    ``path.sha256``. ``before_rename`` runs once the temp file is written (the
    fault-injection tests kill the process there)."""
    path = Path(path)
    digest_path = _digest_path(path)
    old_digest = digest_path.read_bytes() if digest_path.is_file() else None
    digest_path.unlink(missing_ok=True)  # a stale digest must never vouch for a new file
    try:
        atomic_write(path, lambda handle: torch.save(obj, handle), before_rename)
    except (OSError, RuntimeError) as err:
        if old_digest is not None:  # the old file stays, and so does what vouches for it
            with contextlib.suppress(OSError):
                digest_path.write_bytes(old_digest)
        if isinstance(err, RuntimeError) and not _WRITE_FAILED.search(str(err)):
            raise
        raise EarshotError(_write_failure(path, obj, err)) from None
    digest = file_sha256(path)  # read back from the page cache: no second copy in memory
    atomic_write(_digest_path(path), lambda handle: handle.write(f"{digest}\n".encode()))


# torch.save's own words for a write that failed (a full disk, a vanished filesystem).
_WRITE_FAILED = re.compile(r"file write failed|enforce fail|No space left|unexpected pos", re.I)


def _write_failure(path: Path, obj: object, err: BaseException) -> str:
    """One line: what could not be written, why, and the space it needed against what is free."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
    needed = _tensor_bytes(obj)
    try:
        free = shutil.disk_usage(path.parent).free
        room = f"; it needs about {needed / 2**20:.1f} MB and {free / 2**20:.1f} MB are free there"
    except OSError:
        room = f"; it needs about {needed / 2**20:.1f} MB"
    return f"{path}: could not be written ({reason}){room}. The previous checkpoint is kept"


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_digest(path: Path) -> None:
    """EarshotError when ``path`` no longer matches the digest written with it (files
    without one, from earlier versions or copied alone, are accepted)."""
    digest = _digest_path(path)
    if not digest.is_file():
        return
    if file_sha256(path) != digest.read_text().strip():
        raise EarshotError(f"{path}: its SHA-256 does not match {digest.name} (the file was "
                           f"altered or damaged after it was written)")


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Scheduler, scaler: torch.amp.GradScaler | None, train_state: TrainState,
                    before_rename: Callable[[], None] | None = None) -> None:
    """Write one training checkpoint atomically. ``model`` is the bare module (not
    DDP-wrapped); ``scaler`` may be None."""
    payload = {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "train_state": train_state.to_dict(),
    }
    atomic_torch_save(payload, path, before_rename)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise EarshotError(f"{path}: checkpoint not found")
    _check_digest(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file; say which one
        raise EarshotError(f"{path}: not a readable earshot checkpoint ({err})") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        raise EarshotError(f"{path}: not an earshot checkpoint (format {FORMAT_VERSION} expected)")
    try:
        return Checkpoint(model=data["model"], optimizer=data["optimizer"],
                          scheduler=data["scheduler"], scaler=data["scaler"],
                          train_state=TrainState.from_dict(data["train_state"]))
    except (KeyError, TypeError, ValueError) as err:
        raise EarshotError(f"{path}: incomplete earshot checkpoint ({err!r} missing or wrong)") from None


# ---------------------------------------------------------------------------
# the checkpoint directory


def checkpoint_path(ckpt_dir: str | Path, epoch: int, batches: int = 0) -> Path:
    """End of ``epoch`` (``batches=0``), or ``batches`` into ``epoch`` (mid-epoch)."""
    name = f"epoch-{epoch:04d}-batch-{batches:06d}.pt" if batches else f"epoch-{epoch:04d}.pt"
    return Path(ckpt_dir) / name


def _position(path: Path) -> tuple[int, int] | None:
    """(epochs completed, batches into the next epoch) a checkpoint file name stands for."""
    if match := _EPOCH_FILE.match(path.name):
        return int(match.group(1)), 0
    if match := _MID_EPOCH_FILE.match(path.name):
        return int(match.group(1)) - 1, int(match.group(2))
    return None


def list_checkpoints(ckpt_dir: str | Path) -> dict[int, Path]:
    """Epoch -> path of every complete end-of-epoch checkpoint in ``ckpt_dir``."""
    return {done: path for (done, batches), path in _all_checkpoints(ckpt_dir).items() if not batches}


def _all_checkpoints(ckpt_dir: str | Path) -> dict[tuple[int, int], Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return {}
    found = {pos: path for path in ckpt_dir.iterdir() if (pos := _position(path)) is not None}
    return dict(sorted(found.items()))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest checkpoint file, end-of-epoch or mid-epoch (not checked for readability)."""
    found = _all_checkpoints(ckpt_dir)
    return found[max(found)] if found else None


def load_latest(ckpt_dir: str | Path, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, Checkpoint] | None:
    """The newest checkpoint that reads; each newer one that does not is named in a
    warning and passed over. None when there is none; EarshotError when every one fails."""
    found = _all_checkpoints(ckpt_dir)
    errors = []
    for _, path in sorted(found.items(), reverse=True):
        try:
            return path, load_checkpoint(path, map_location)
        except EarshotError as err:
            log.warning("%s; resuming from the previous checkpoint instead", err)
            errors.append(str(err))
    if errors:
        raise EarshotError("no checkpoint can be read:\n  " + "\n  ".join(errors))
    return None


def prune_mid_epoch(ckpt_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete mid-epoch checkpoints older than the newest end-of-epoch one, and all but
    the newest ``keep_last`` (at least 1) of the rest."""
    found = _all_checkpoints(ckpt_dir)
    last_epoch = max((done for done, batches in found if not batches), default=-1)
    mid = sorted(pos for pos in found if pos[1])
    newer = [pos for pos in mid if pos[0] >= last_epoch]
    keep = set(newer[-max(keep_last, 1):])
    removed = []
    for pos in mid:
        if pos not in keep:
            _remove(found[pos])
            removed.append(found[pos])
    return removed


def epochs_to_keep(state: TrainState, keep_last: int, keep_best: int) -> set[int]:
    """The last ``keep_last`` epochs plus the ``keep_best`` best ones (needed for averaging);
    ``keep_best`` 0 keeps no best ones."""
    epochs = [epoch for epoch, _ in state.history]
    last = set(sorted(epochs)[-keep_last:]) if keep_last > 0 else set()
    return last | set(state.best_epochs(keep_best))


def prune_checkpoints(ckpt_dir: str | Path, keep: set[int]) -> list[Path]:
    """Delete epoch checkpoints not in ``keep``; returns the removed paths."""
    removed = []
    for epoch, path in list_checkpoints(ckpt_dir).items():
        if epoch not in keep:
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)


def remove_partial(ckpt_dir: str | Path) -> list[Path]:
    """Delete temp files left by a save that was killed before its rename."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    stale = [p for p in ckpt_dir.iterdir() if p.name.startswith(".") and TMP_MARK in p.name]
    for path in stale:
        log.warning("%s: removing an incomplete checkpoint left by an interrupted save", path)
        path.unlink(missing_ok=True)
    return stale


def check_same_model(cfg: object, saved_path: Path) -> None:
    """ConfigError naming the keys when the model or tokenizer sections of ``cfg`` (any
    experiment config) differ from the saved run's config file, which a resumed
    checkpoint's weights were made for."""
    from earshot.config import load_config

    if not saved_path.is_file():
        log.warning("%s: missing; cannot check the resumed model matches", saved_path)
        return
    saved = load_config(saved_path, cls=type(cfg))
    changed = []
    for section in ("model", "tokenizer"):
        if hasattr(cfg, section):
            changed += _changed_keys(getattr(saved, section), getattr(cfg, section), section)
    if changed:
        raise ConfigError(f"cannot resume {saved_path.parent}: these keys differ from "
                          f"{saved_path}: {', '.join(changed)}")


def _changed_keys(old: object, new: object, where: str) -> list[str]:
    if dataclasses.is_dataclass(old):
        keys = []
        for f in dataclasses.fields(old):
            keys += _changed_keys(getattr(old, f.name), getattr(new, f.name), f"{where}.{f.name}")
        return keys
    return [] if old == new else [f"{where} ({old!r} -> {new!r})"]


# ---------------------------------------------------------------------------
# averaging


def best_weights(ckpt_dir: str | Path, state: TrainState, average_best: int, average_last: int
                 ) -> tuple[list[int], dict[str, torch.Tensor]]:
    """The epochs to export and their weights: the mean of the last ``average_last`` epochs
    when that is set, else of the ``average_best`` best by ``state``'s dev history (one
    epoch's own weights when one is chosen). ConfigError when none of them is kept."""
    available = list_checkpoints(ckpt_dir)
    if average_last > 0:
        epochs = sorted(available)[-average_last:]
    else:
        epochs = [e for e in state.best_epochs(average_best) if e in available]
    if not epochs:
        raise ConfigError(f"{ckpt_dir}: no checkpoint of the best epochs to export")
    paths = [available[e] for e in epochs]
    return epochs, average_checkpoints(paths) if len(paths) > 1 else load_checkpoint(paths[0]).model


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
