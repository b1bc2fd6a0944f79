"""earshot: attention-based encoder-decoder speech recognition (joint CTC/attention).

>>> import earshot
>>> earshot.__version__
'0.2.0'
"""

__version__ = "0.2.0"


def load_model(model_dir, device: str = "cpu"):
    """Load a model directory (config.yaml, tokenizer/, model.safetensors) as a Transcriber."""
    from earshot.inference import Transcriber

    return Transcriber.load(model_dir, device=device)


def __getattr__(name):
    if name == "Transcriber":
        from earshot.inference import Transcriber

        return Transcriber
    raise AttributeError(name)
