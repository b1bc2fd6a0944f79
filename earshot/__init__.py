"""earshot: attention-based encoder-decoder speech recognition (joint CTC/attention).

>>> import earshot
>>> earshot.__version__
'0.2.0'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from earshot.inference import Transcriber

__version__ = "0.2.0"


def load_model(model_dir: str | Path, device: str | None = "auto") -> Transcriber:
    """Load a model directory (config.yaml, tokenizer/, model.safetensors) as a Transcriber
    on ``device``: auto (the default: CUDA, else mps, else the CPU), cpu, cuda, cuda:N or mps."""
    from earshot.inference import Transcriber

    return Transcriber.load(model_dir, device=device)


def __getattr__(name: str) -> type[Transcriber]:
    if name == "Transcriber":
        from earshot.inference import Transcriber

        return Transcriber
    raise AttributeError(name)
