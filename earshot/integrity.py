"""File digests: a model or LM directory carries ``checksums.sha256``, checked on load.

The manifest has one ``<sha256>  <path>`` line per file (paths relative to the
directory, ``/``-separated; the format of ``sha256sum``, so ``sha256sum -c`` checks it
too). It is written last, inside the staging folder, so it always describes a complete
directory. On load every listed file must be present and match: a tokenizer edited by
hand, weights damaged in a copy, a file truncated by a full disk are named instead of
silently changing the transcripts. Files not listed (a README a user added) are ignored;
a directory without a manifest (written before earshot had them) loads as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from earshot.errors import ConfigError

log = logging.getLogger(__name__)

CHECKSUM_FILE = "checksums.sha256"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def write_checksums(directory: str | Path) -> Path:
    """Write ``directory/checksums.sha256`` over every file below ``directory``."""
    directory = Path(directory)
    lines = [f"{file_sha256(path)}  {path.relative_to(directory).as_posix()}\n"
             for path in sorted(directory.rglob("*"))
             if path.is_file() and path.name != CHECKSUM_FILE]
    out = directory / CHECKSUM_FILE
    out.write_text("".join(lines))
    return out


def verify_checksums(directory: str | Path) -> bool:
    """Check ``directory`` against its manifest; ConfigError naming the first file that
    is missing or differs, or the manifest line that cannot be read. False when the
    directory has no manifest (older releases), True when every file matched."""
    directory = Path(directory)
    manifest = directory / CHECKSUM_FILE
    if not manifest.is_file():
        log.debug("%s: no %s; file integrity not checked", directory, CHECKSUM_FILE)
        return False
    for number, line in enumerate(manifest.read_text(errors="replace").splitlines(), 1):
        digest, _, name = line.partition("  ")
        rel = PurePosixPath(name)
        if (len(digest) != 64 or not name or rel.is_absolute() or ".." in rel.parts
                or any(c not in "0123456789abcdef" for c in digest)):
            raise ConfigError(f"{manifest}:{number}: not a '<sha256>  <relative path>' line")
        path = directory / rel
        if not path.is_file():
            raise ConfigError(f"{path}: missing, but listed in {manifest} (the directory is "
                              f"incomplete; copy it again or re-export the model)")
        if file_sha256(path) != digest:
            raise ConfigError(f"{path}: its SHA-256 differs from {manifest}:{number} (the file "
                              f"was changed or damaged after the model was written); re-export "
                              f"or copy the model again, or delete {CHECKSUM_FILE} to accept "
                              f"the change")
    return True


# ---------------------------------------------------------------------------
# writing a file whole or not at all

TMP_MARK = ".tmp-"  # in the name of a temporary file that is renamed into place


def atomic_write(path: Path, write: Callable, before_rename: Callable[[], None] | None = None) -> None:
    """``write(handle)`` into a temp file next to ``path``, fsync, rename over ``path``,
    fsync the directory: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
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


def atomic_write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))
