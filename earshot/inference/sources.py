"""What can be transcribed, read a block at a time: files, arrays, file lists, folders, stdin.

A ``Source`` is one input. A file is read in blocks and resampled as a stream, so a long
recording is never held whole; an array handed in through the Python API is checked
(``ValueError`` naming the argument) and resampled once.

>>> import numpy as np
>>> [s.id for s in from_api([np.zeros(8000, np.float32)], sample_rate=8000, rate=16000)]
['<array 0>']
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

from earshot.audio import MAX_PEAK, RESAMPLE_QUALITY, _check_exists, audio_info
from earshot.errors import AudioError

# What a folder is searched for (soundfile reads these).
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                            ".au", ".snd", ".w64", ".caf", ".sph", ".nist", ".wv"})
BLOCK_SECONDS = 30.0  # read from a file at a time


@dataclass
class Source:
    """One input: a file (``path``) or samples already in memory (``array``, mono float32
    at the model's rate); ``error`` is why it cannot be read (its result says so)."""

    id: str
    path: Path | None = None
    array: torch.Tensor | None = None
    error: str | None = None
    temporary: bool = False  # ``path`` is a spool of standard input, removed once read


# -- the Python API ---------------------------------------------------------------


def from_api(audio: Any, sample_rate: int | None, rate: int) -> list[Source]:
    """Sources for ``transcribe(audio)``: a path (str or Path), an array or tensor (with
    ``sample_rate``), or a list of these. Bad arrays raise ``ValueError`` naming the item."""
    items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    out = []
    for i, item in enumerate(items):
        where = "audio" if not isinstance(audio, (list, tuple)) else f"audio[{i}]"
        if isinstance(item, (str, os.PathLike)):
            out.append(Source(str(item), path=Path(item)))
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            out.append(Source(f"<array {i}>", array=array_at_rate(item, sample_rate, rate, where)))
        else:
            raise TypeError(f"{where}: expected a path, a numpy array or a torch tensor, got "
                            f"{type(item).__name__}")
    return out


def array_at_rate(x: np.ndarray | torch.Tensor, sample_rate: int | None, rate: int,
                  where: str = "audio") -> torch.Tensor:
    """A waveform from the API as mono float32 at ``rate``: 1-D samples, or 2-D with
    channels along the shorter axis (channels x samples or samples x channels), averaged;
    floating point in [-1, 1], finite."""
    if sample_rate is None:
        raise ValueError(f"{where}: an array needs sample_rate= (the rate it was recorded at; "
                         f"this model takes {rate} Hz)")
    if not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 768_000:
        raise ValueError(f"sample_rate: expected an integer rate in Hz (1000-768000), got "
                         f"{sample_rate!r}")
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{where}: expected 1-D samples or 2-D (channels and samples), got shape "
                         f"{arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{where}: expected floating-point samples in [-1, 1], got {arr.dtype} "
                         f"(divide 16-bit integers by 32768)")
    if arr.size == 0:
        raise ValueError(f"{where}: the array holds no samples")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: the array holds NaN or infinite samples")
    if float(np.abs(arr).max()) > MAX_PEAK:
        raise ValueError(f"{where}: samples reach {float(np.abs(arr).max()):.4g}; expected "
                         f"[-1, 1] (divide 16-bit integers by 32768)")
    if arr.ndim == 2:
        mono = arr.mean(axis=0 if arr.shape[0] <= arr.shape[1] else 1, dtype=np.float32)
    else:
        mono = arr
    if sample_rate != rate:
        mono = soxr.resample(mono, sample_rate, rate, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


# -- the command line -------------------------------------------------------------


def from_cli(items: list[str], recursive: bool = False) -> Iterator[Source]:
    """Sources for ``earshot transcribe ITEM...``, lazily: files, ``@list.txt`` (one path a
    line; blank lines and lines starting with # skipped), folders (their audio files; with
    ``recursive`` also those below) and ``-`` (audio on standard input, spooled to a
    temporary file)."""
    for item in items:
        if item == "-":
            yield _stdin_source()
        elif item.startswith("@"):
            yield from _list_file(item[1:])
        elif Path(item).is_dir():
            yield from _folder(Path(item), recursive)
        else:
            yield Source(item, path=Path(item))


def _list_file(name: str) -> Iterator[Source]:
    try:
        handle = open(name, encoding="utf-8")
    except OSError as err:
        yield Source(f"@{name}", error=f"@{name}: cannot read the file list ({err.strerror})")
        return
    with handle:
        for number, line in enumerate(handle, 1):
            path = line.strip()
            if path and not path.startswith("#"):
                yield Source(path, path=Path(path))


def _folder(folder: Path, recursive: bool) -> Iterator[Source]:
    found = False
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, dirs, files in walk:
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
                found = True
                yield Source(str(path), path=path)
    if not found:
        hint = "" if recursive else " (add --recursive to search the folders below it)"
        yield Source(str(folder), error=f"{folder}: no audio files "
                                        f"({', '.join(sorted(AUDIO_SUFFIXES))}){hint}")


def _stdin_source() -> Source:
    spool = tempfile.NamedTemporaryFile(prefix="earshot-stdin-", delete=False)
    with spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
    return Source("-", path=Path(spool.name), temporary=True)


# -- reading ----------------------------------------------------------------------


def file_blocks(path: Path, rate: int, seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """The mono float32 samples of ``path`` at ``rate``, ``seconds`` at a time (resampled as
    a stream); AudioError naming the file for anything unreadable, NaN or mis-scaled."""
    info = audio_info(path)
    stream = (soxr.ResampleStream(info.sample_rate, rate, 1, dtype="float32",
                                  quality=RESAMPLE_QUALITY) if info.sample_rate != rate else None)
    blocksize = max(1, int(seconds * info.sample_rate))
    total = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(blocksize, dtype="float32", always_2d=True)
                last = len(block) < blocksize
                total += len(block)
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                _check_block(path, mono)
                if stream is not None:
                    mono = stream.resample_chunk(np.ascontiguousarray(mono), last=last)
                if len(mono):
                    yield mono
                if last:
                    break
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
        reason = getattr(err, "error_string", "") or str(err) or type(err).__name__
        raise AudioError(path, f"unreadable or corrupt audio ({reason.strip()})") from None
    if total == 0:
        raise AudioError(path, "audio has zero samples")


def _check_block(path: Path, samples: np.ndarray) -> None:
    if samples.size and not np.isfinite(samples).all():
        raise AudioError(path, "audio contains non-finite (NaN/Inf) samples")
    if samples.size and float(np.abs(samples).max()) > MAX_PEAK:
        raise AudioError(path, f"samples reach {float(np.abs(samples).max()):.4g}; decoded audio "
                               f"must lie in [-1, 1]")


def check_readable(source: Source) -> None:
    """AudioError now for a path that is missing, not a regular file (a folder, a FIFO) or
    whose header is unreadable or absurd, before its samples are read."""
    if source.path is not None:
        _check_exists(source.path)
        audio_info(source.path)
