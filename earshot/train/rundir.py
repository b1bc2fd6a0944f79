"""A run owns its experiment directory.

Before a run writes anything, ``claim_run_dir`` checks ``train.exp_dir`` and takes an
advisory lock on ``EXP_DIR/.earshot-run.lock`` for the rest of the process's work on it:

- an empty ``exp_dir``, the filesystem root, the home or the current directory is refused
  (a run there would scatter its files among the user's);
- an existing directory holding files earshot does not write (or a ``config.yaml`` that
  no run wrote) is refused, naming a few of them, so nothing the run writes replaces a
  file it did not create;
- a directory another live run holds is refused, naming that run's process, host, start
  time and command. The lock is the kernel's (``flock``): it goes with the process however
  the process ends, so a killed run never leaves a stale lock behind. Where the
  filesystem has no such locks, the holder's PID and host decide: a PID of this host that
  no longer runs is stale, and its lock is taken over.

``release_run_dir`` lets go of it when the run ends; a process may claim a directory it
already holds (a run started again in the same process).
"""

from __future__ import annotations

import datetime
import errno
import fnmatch
import json
import os
import socket
import sys
from pathlib import Path

from earshot.errors import ConfigError

LOCK_FILE = ".earshot-run.lock"
# What a run writes into its directory (engine, tasks, monitor, average).
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "tokenizer", "model", "tensorboard", "plans",
             "plots", LOCK_FILE, "model-best*", "model-last*", ".model.tmp-*", ".model.old-*",
             ".model-*.tmp-*", ".model-*.old-*")

_HELD: dict[Path, int] = {}  # resolved directory -> the open lock file


def _key(exp_dir: Path) -> Path:
    return exp_dir.resolve()


def check_run_dir(exp_dir: str | Path) -> Path:
    """``train.exp_dir`` as a Path, or a ConfigError saying why no run may write there."""
    where = "config key 'train.exp_dir'"
    if not str(exp_dir).strip():
        raise ConfigError(f"{where}: empty; give a directory of the run's own, e.g. exp/myrun")
    path = Path(exp_dir)
    resolved = path.resolve()
    special = {Path(resolved.anchor): "the filesystem root", Path.home().resolve(): "your home directory",
               Path.cwd().resolve(): "the current directory"}
    if resolved in special:
        raise ConfigError(f"{where}: {str(exp_dir)!r} is {special[resolved]}; a run needs a "
                          f"directory of its own, e.g. exp/myrun")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where}: {path} is a file, not a directory")
    if path.is_dir() and _HELD.get(resolved) is None:
        foreign = sorted(p.name for p in path.iterdir()
                         if not any(fnmatch.fnmatch(p.name, pattern) for pattern in RUN_FILES))
        ours = (path / LOCK_FILE).exists() or (path / "checkpoints").is_dir()
        if not ours and (path / "config.yaml").exists():
            foreign.insert(0, "config.yaml")
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ConfigError(f"{where}: {path} holds files earshot did not write ({shown}); a "
                              f"run would write among them: choose a new or empty directory")
    return path


def claim_run_dir(exp_dir: str | Path) -> Path:
    """Check ``exp_dir`` (``check_run_dir``), create it and lock it for this process."""
    path = check_run_dir(exp_dir)
    key = _key(path)
    if key in _HELD:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"config key 'train.exp_dir': cannot create {path / LOCK_FILE}: "
                          f"{err.strerror}") from None
    try:
        _lock(fd, path)
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode() + b"\n")
    _HELD[key] = fd
    return path


def release_run_dir(exp_dir: str | Path) -> None:
    """Let go of the lock this process holds on ``exp_dir`` (nothing if none)."""
    fd = _HELD.pop(_key(Path(exp_dir)), None)
    if fd is not None:
        _unlock(fd)
        os.close(fd)


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
        return (f"process {holder['pid']} on {holder['host']} since {holder['started']}: "
                f"{holder['command']}")
    except (ValueError, KeyError, TypeError):
        return "a process that left no description"


def _lock(fd: int, path: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        raise ConfigError(f"config key 'train.exp_dir': {path} is in use by another run "
                          f"({_describe(fd)}); wait for it to end, or choose another "
                          f"train.exp_dir") from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    # No kernel locks here (some network filesystems): the holder's PID and host decide.
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
    except ValueError:
        holder = {}
    if holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
            and _alive(holder.get("pid")):
        raise ConfigError(f"config key 'train.exp_dir': {path} is in use by another run "
                          f"({_describe(fd)}); wait for it to end, or choose another train.exp_dir")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlock(fd: int) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
