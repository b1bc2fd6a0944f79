"""One device policy for every command, ``load_model()`` and training.

A device is named ``auto`` (the default everywhere: the first CUDA device, else Apple's
``mps``, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. A name that is not one
of these, or a device this torch build or machine lacks, is a ``ConfigError`` of one
line naming where the name came from (an option, a config key, an argument) and what is
available here.

>>> resolve_device("cpu", "option --device")
device(type='cpu')
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from earshot.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
NAMES_HELP = "auto, cpu, cuda, cuda:N or mps"


def check_device_name(name: object, where: str) -> None:
    """A ConfigError naming ``where`` unless ``name`` is spelled like a device (no torch)."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a device (use {NAMES_HELP})")


def available_devices() -> list[str]:
    """The devices this torch build can use on this machine, CPU first."""
    import torch

    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto", where: str = "device",
                   local_rank: int | None = None) -> torch.device:
    """The torch device for ``name`` (None means ``auto``), checked against this machine.

    ``local_rank`` (a process of a multi-GPU job) turns ``cuda`` and ``auto`` on a CUDA
    machine into ``cuda:LOCAL_RANK``."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else name
    check_device_name(name, where)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    missing = ""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            missing = f"no CUDA device is available (torch {torch.__version__})"
        elif device.index is not None and device.index >= count:
            missing = f"this machine has {count} CUDA device(s)"
    elif device.type == "mps" and not _mps_available():
        missing = f"this torch build or machine has no mps device (torch {torch.__version__})"
    if missing:
        raise ConfigError(f"{where}: {name!r} but {missing}; available here: "
                          f"{', '.join(available_devices())} (or auto)")
    return device
