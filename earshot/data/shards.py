"""Sharded storage: lhotse Shar (``cuts.NNNNNN.jsonl.gz`` beside ``recording.NNNNNN.tar``,
audio as FLAC inside), written with a checksum per file and read sequentially.

``earshot shard MANIFEST --out DIR`` writes a folder that ``data.train`` (or ``dev``,
``--manifest``) may name instead of a manifest. Reading checks every shard file against
``checksums.sha256`` first: a truncated or altered shard is named and left out (or, with
``data.strict``, stops the run), never read half-way. The cuts come shard after shard;
with ``shuffle_shards`` the shard order is a permutation drawn from (seed, epoch), so an
epoch reads the same order in every run and after a resume, and the bucketing sampler's
buffer shuffles within it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from lhotse import CutSet

from earshot.errors import ConfigError, ManifestError
from earshot.integrity import file_sha256

logger = logging.getLogger(__name__)

CHECKSUMS = "checksums.sha256"


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
    files = sorted(p for p in out_dir.iterdir() if p.name != CHECKSUMS)
    (out_dir / CHECKSUMS).write_text("".join(f"{file_sha256(p)}  {p.name}\n" for p in files))
    logger.info("%s: %d cuts in %d shards", out_dir, len(kept), len(written["cuts"]))
    return out_dir


class ShardedCuts:
    """The cuts of a shard folder, shard after shard (lazily; each shard's audio comes
    with its cuts). ``epoch`` (set by the loader) picks the shard order when shuffling."""

    def __init__(self, directory: str | Path, shuffle_shards: bool = True, seed: int = 0,
                 strict: bool = False) -> None:
        self.directory = Path(directory)
        self.shuffle_shards, self.seed, self.epoch = shuffle_shards, seed, 0
        self.shards = verified_shards(self.directory, strict)

    def __iter__(self):
        from lhotse.shar.readers.lazy import LazySharIterator

        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}/{self.epoch}/shards").shuffle(order)
        for cuts, recording in order:
            yield from LazySharIterator(fields={"cuts": [cuts], "recording": [recording]})

    def __len__(self) -> int:
        return sum(1 for _ in self.cut_ids())

    def cut_ids(self):
        """Every cut id, from the shards' manifests alone (no audio read)."""
        for cuts, _ in self.shards:
            yield from (c.id for c in CutSet.from_jsonl_lazy(cuts))


def verified_shards(directory: Path, strict: bool = False) -> list[tuple[Path, Path]]:
    """(cuts, recording) file pairs of every shard whose files match ``checksums.sha256``;
    a shard that does not is named and left out (ManifestError with ``strict``)."""
    listed = directory / CHECKSUMS
    if not listed.is_file():
        raise ManifestError(f"{directory}: no {CHECKSUMS} (write shards with: earshot shard "
                            f"MANIFEST --out {directory})")
    expected = {}
    for line in listed.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    shards = []
    for cuts in sorted(directory.glob("cuts.*.jsonl.gz")):
        index = cuts.name.split(".")[1]
        recording = directory / f"recording.{index}.tar"
        problem = _shard_problem((cuts, recording), expected)
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


def _shard_problem(files: tuple[Path, ...], expected: dict[str, str]) -> str | None:
    for path in files:
        if not path.is_file():
            return f"{path.name} is missing"
        if path.name not in expected:
            return f"{path.name} is not in {CHECKSUMS}"
        if file_sha256(path) != expected[path.name]:
            return f"{path.name} does not match its checksum (truncated or altered)"
    return None


def open_shards(directory: str | Path, shuffle_shards: bool = True, seed: int = 0,
                strict: bool = False) -> CutSet:
    """A lazy CutSet over a shard folder (see ``ShardedCuts``)."""
    return CutSet(ShardedCuts(directory, shuffle_shards, seed, strict))


class _ShardMetadata:
    """The cuts of ``ShardedCuts`` from the shards' manifests alone: no audio is read."""

    def __init__(self, sharded: ShardedCuts) -> None:
        self.sharded = sharded

    def __iter__(self):
        for cuts, _ in self.sharded.shards:
            yield from CutSet.from_jsonl_lazy(cuts)


def metadata_view(cuts: CutSet) -> CutSet:
    """``cuts`` for a pass over metadata (durations, texts): the same cuts without reading
    a shard's audio when they come from shards (filters kept), else ``cuts`` itself."""
    from lhotse.lazy import LazyFilter

    inner = cuts.data
    if isinstance(inner, ShardedCuts):
        return CutSet(_ShardMetadata(inner))
    if isinstance(inner, LazyFilter) and isinstance(inner.iterator, CutSet):
        base = metadata_view(inner.iterator)
        return cuts if base is inner.iterator else CutSet(LazyFilter(base, inner.predicate))
    return cuts


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
