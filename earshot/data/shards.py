"""Sharded storage: lhotse Shar (``cuts.NNNNNN.jsonl.gz`` beside ``recording.NNNNNN.tar``,
audio as FLAC inside), written with a checksum per file and read sequentially.

``earshot shard MANIFEST --out DIR`` writes a folder that ``data.train`` (or ``dev``,
``--manifest``) may name instead of a manifest. Opening it checks that every shard file
is there with the size it was written with: a truncated or missing shard is named and
left out (or, with ``data.strict``, stops the run). ``earshot shard --verify DIR``
checks every file against ``checksums.sha256``.

The cuts come shard after shard, as metadata: the sampler (in every rank, and when a
resumed epoch skips batches) reads only the shards' small manifests. The process that
loads a batch reads each cut's audio from its shard's tar, found through an index of the
tar's members built once per process; so each rank reads the audio of its own batches
only, in shard order. With ``shuffle_shards`` the shard order is a permutation drawn
from (seed, epoch): the same in every run and after a resume; the bucketing sampler's
buffer shuffles within it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from lhotse import CutSet
from lhotse.utils import fastcopy

from earshot.errors import ConfigError, ManifestError
from earshot.integrity import atomic_write_text, file_sha256

logger = logging.getLogger(__name__)

CHECKSUMS = "checksums.sha256"
SIZES = "sizes.json"  # bytes of each shard file as written
SHARD_KEY = "earshot_shard"  # cut.custom: the tar that holds the cut's audio


def is_shard_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and any(Path(path).glob("cuts.*.jsonl.gz"))


def write_shards(manifest: str | Path, out_dir: str | Path, shard_size: int = 1000) -> Path:
    """Shar shards of ``manifest`` (every cut's audio read and stored as FLAC) in
    ``out_dir``, plus ``checksums.sha256``. A cut whose audio does not load is named and
    left out. Returns ``out_dir``."""
    from lhotse.audio.backend import audio_backend

    from earshot.data.manifests import load_cuts

    if shard_size < 1:
        raise ConfigError("option --shard-size: must be >= 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"option --out: {out_dir} is not empty; shards go to a folder of their own")
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = load_cuts(manifest, need_text=False)
    with audio_backend("LibsndfileBackend"):  # NIST SPHERE and MP3 through soundfile
        written = cuts.to_shar(out_dir, fields={"recording": "flac"}, shard_size=shard_size,
                               fault_tolerant=True)
    kept = {c.id for c in CutSet.from_shar(fields={"cuts": written["cuts"]})}
    missing = [c.id for c in cuts if c.id not in kept]
    for uid in missing[:20]:
        logger.warning("cut '%s': its audio did not load; left out of the shards", uid)
    if missing:
        logger.warning("%d of %d cuts left out of the shards (audio did not load)", len(missing),
                       len(missing) + len(kept))
    files = sorted(p for p in out_dir.iterdir() if p.name not in (CHECKSUMS, SIZES))
    atomic_write_text(out_dir / SIZES, json.dumps({p.name: p.stat().st_size for p in files}, indent=1))
    # written last: a folder with its checksums is a complete one
    atomic_write_text(out_dir / CHECKSUMS, "".join(f"{file_sha256(p)}  {p.name}\n" for p in files))
    logger.info("%s: %d cuts in %d shards", out_dir, len(kept), len(written["cuts"]))
    return out_dir


class ShardedCuts:
    """The cuts of a shard folder, shard after shard, read lazily from the shards'
    manifests (no audio: ``load_shard_audio`` reads it). ``epoch`` (set by the loader)
    picks the shard order when shuffling."""

    def __init__(self, directory: str | Path, shuffle_shards: bool = True, seed: int = 0,
                 strict: bool = False) -> None:
        self.directory = Path(directory)
        self.shuffle_shards, self.seed, self.epoch = shuffle_shards, seed, 0
        self.shards = verified_shards(self.directory, strict)

    def __iter__(self):
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}/{self.epoch}/shards").shuffle(order)
        for cuts, recording in order:
            for cut in CutSet.from_jsonl_lazy(cuts):
                yield fastcopy(cut, custom={**(cut.custom or {}), SHARD_KEY: str(recording)})

    def __len__(self) -> int:
        """Cuts in the usable shards (one pass over their manifests)."""
        return sum(1 for cuts, _ in self.shards for _ in CutSet.from_jsonl_lazy(cuts))


def verified_shards(directory: Path, strict: bool = False) -> list[tuple[Path, Path]]:
    """(cuts, recording) file pairs of every shard whose files are there with the sizes
    they were written with; a shard that is not is named and left out (ManifestError
    with ``strict``)."""
    listed = directory / SIZES
    if not listed.is_file() or not (directory / CHECKSUMS).is_file():
        raise ManifestError(f"{directory}: no {SIZES} or {CHECKSUMS} (write shards with: "
                            f"earshot shard MANIFEST --out {directory})")
    try:
        sizes = json.loads(listed.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{listed}: not valid JSON ({err})") from None
    shards = []
    for cuts in sorted(directory.glob("cuts.*.jsonl.gz")):
        index = cuts.name.split(".")[1]
        recording = directory / f"recording.{index}.tar"
        problem = _shard_problem((cuts, recording), sizes)
        if problem is None:
            shards.append((cuts, recording))
            continue
        message = f"{directory}: shard {index}: {problem}"
        if strict:
            raise ManifestError(message + " (data.strict is on)")
        logger.warning("%s; the shard is left out", message)
    if not shards:
        raise ManifestError(f"{directory}: no usable shard")
    return shards


def _shard_problem(files: tuple[Path, ...], sizes: dict[str, int]) -> str | None:
    for path in files:
        if not path.is_file():
            return f"{path.name} is missing"
        if path.name not in sizes:
            return f"{path.name} is not in {SIZES}"
        size = path.stat().st_size
        if size != sizes[path.name]:
            return f"{path.name} holds {size} bytes, {sizes[path.name]} were written (truncated?)"
    return None


def verify_shards(directory: str | Path) -> list[str]:
    """Every shard file checked against ``checksums.sha256``: the problems, one line each."""
    directory = Path(directory)
    problems = []
    for line in (directory / CHECKSUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != digest:
            problems.append(f"{path}: does not match its checksum (truncated or altered)")
    return problems


_TAR_INDEXES: dict[str, dict[str, tuple[int, int]]] = {}  # per process: tar -> member -> (offset, size)


def load_shard_bytes(cut) -> bytes:
    """The encoded audio of a cut read from a shard (``cut.custom[SHARD_KEY]``)."""
    import tarfile

    from earshot.errors import AudioError

    tar = (cut.custom or {}).get(SHARD_KEY)
    if tar is None:
        raise AudioError(cut.id, "cut comes from shards but does not say which")
    if tar not in _TAR_INDEXES:
        try:
            with tarfile.open(tar) as handle:
                _TAR_INDEXES[tar] = {m.name: (m.offset_data, m.size) for m in handle.getmembers()
                                     if m.isfile()}
        except (tarfile.TarError, OSError) as err:
            _TAR_INDEXES[tar] = {}
            logger.warning("%s: unreadable shard (%s); its cuts are dropped", tar, err)
    index = _TAR_INDEXES[tar]
    member = next((index[n] for n in (f"{cut.id}.flac", f"{cut.id}.wav", f"{cut.id}.opus")
                   if n in index), None)
    if member is None:
        raise AudioError(tar, f"no audio for cut '{cut.id}' in this shard")
    offset, size = member
    with open(tar, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def open_shards(directory: str | Path, shuffle_shards: bool = True, seed: int = 0,
                strict: bool = False) -> CutSet:
    """A lazy CutSet over a shard folder (see ``ShardedCuts``)."""
    return CutSet(ShardedCuts(directory, shuffle_shards, seed, strict))


def sharded_sources(cuts) -> list[ShardedCuts]:
    """The shard folders a (lazily filtered, mapped) CutSet reads, for their epoch."""
    found, todo, seen = [], [cuts], 0
    while todo and seen < 32:
        obj, seen = todo.pop(), seen + 1
        if isinstance(obj, ShardedCuts):
            found.append(obj)
            continue
        for name in ("cuts", "iterator"):
            child = getattr(obj, name, None)
            if child is not None and not isinstance(child, (list, dict, tuple)):
                todo.append(child)
    return found
