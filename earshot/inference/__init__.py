"""Run a trained model: transcribe recordings of any length, evaluate manifests.

>>> import earshot                                   # doctest: +SKIP
>>> model = earshot.load_model("exp/an4/model")       # doctest: +SKIP
>>> model.transcribe("a.wav").text                   # doctest: +SKIP
'YES'

Names are imported on first use, so ``earshot --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Transcriber": "transcriber", "Result": "results", "Segment": "results", "Word": "results",
    "Hypothesis": "results", "evaluate": "scoring", "decode_max_duration": "scoring",
    "load_lm_dir": "scoring", "write_nbest": "scoring",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"earshot.inference.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'earshot.inference' has no attribute {name!r}")
