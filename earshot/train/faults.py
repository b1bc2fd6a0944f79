"""Fault injection for the crash tests: make this process die at a chosen moment.

``EARSHOT_FAULT=after-step:N`` SIGKILLs the process right after optimizer step N;
``EARSHOT_FAULT=in-save:N`` SIGKILLs it while the checkpoint written after step N is on
disk as a temporary file but not yet renamed into place; ``EARSHOT_FAULT=stall-after-step:N``
makes it sleep for ever after step N (a hung rank). ``EARSHOT_FAULT_RANK=R`` limits
the fault to rank R of a distributed job. Unset (always, outside tests), nothing happens.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "EARSHOT_FAULT"
RANK_ENV = "EARSHOT_FAULT_RANK"


def hit(event: str, step: int, rank: int = 0) -> None:
    """Die by SIGKILL (no cleanup, no flush: like a power cut or the OOM killer) when the
    environment asks for ``event`` ("after-step" or "in-save") at ``step`` on ``rank``;
    hang instead for "stall-after-step"."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, at = spec.partition(":")
    wanted_rank = os.environ.get(RANK_ENV)
    if not (at.isdigit() and int(at) == step and (wanted_rank is None or int(wanted_rank) == rank)):
        return
    if name == event:
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "stall-" + event:
        while True:
            time.sleep(60)
