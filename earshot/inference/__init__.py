"""Run a trained model: transcribe recordings of any length, evaluate manifests.

>>> import earshot                                   # doctest: +SKIP
>>> model = earshot.load_model("exp/an4/model")       # doctest: +SKIP
>>> model.transcribe("a.wav").text                   # doctest: +SKIP
'YES'
"""

from earshot.inference.evaluate import decode_max_duration, evaluate, load_lm_dir, write_nbest
from earshot.inference.results import Hypothesis, Result, Segment, Word
from earshot.inference.transcriber import Transcriber

__all__ = ["Hypothesis", "Result", "Segment", "Transcriber", "Word", "decode_max_duration",
           "evaluate", "load_lm_dir", "write_nbest"]
