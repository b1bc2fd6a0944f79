"""A Result as the OpenAI transcription API answers: json, text, srt, vtt, verbose_json.

Each format is one function from (result, language, word timestamps asked) to the body
and its media type; ``FORMATS`` maps the ``response_format`` field to it.

>>> from earshot.inference.results import Result, Segment, Word
>>> seg = Segment(0, 16000, 16000, "YES", [Word("YES", 1600, 8000, 16000, 0.93)])
>>> respond(Result("a.wav", [seg], 16000, 16000), "json", "en", False)
('{"text": "YES"}', 'application/json')
>>> print(respond(Result("a.wav", [seg], 16000, 16000), "srt", "en", True)[0])
1
00:00:00,100 --> 00:00:00,500
YES
<BLANKLINE>
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from earshot.inference.outputs import render
from earshot.inference.results import Result, Segment

JSON = "application/json"


def _json(result: Result, language: str, words: bool) -> tuple[str, str]:
    return json.dumps({"text": result.text}, ensure_ascii=False), JSON


def _text(result: Result, language: str, words: bool) -> tuple[str, str]:
    return result.text + "\n", "text/plain; charset=utf-8"


def _srt(result: Result, language: str, words: bool) -> tuple[str, str]:
    return render(result, "srt"), "text/plain; charset=utf-8"


def _vtt(result: Result, language: str, words: bool) -> tuple[str, str]:
    return render(result, "vtt"), "text/vtt; charset=utf-8"


def _verbose_json(result: Result, language: str, words: bool) -> tuple[str, str]:
    body: dict[str, Any] = {"task": "transcribe", "language": language,
                            "duration": round(result.duration, 3), "text": result.text,
                            "segments": [_segment(i, s) for i, s in enumerate(result.segments)]}
    if words:
        body["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                          "confidence": round(w.confidence, 4)} for w in result.words]
    return json.dumps(body, ensure_ascii=False), JSON


def _segment(index: int, seg: Segment) -> dict[str, Any]:
    """A segment as verbose_json lists it: the OpenAI keys that earshot can fill truly
    (id, start, end, text, tokens), the best hypothesis's log-score, and the n-best list
    when more than one was asked for."""
    best = seg.nbest[0] if seg.nbest else None
    out: dict[str, Any] = {"id": index, "start": round(seg.start, 3), "end": round(seg.end, 3),
                           "text": seg.text,
                           "tokens": [int(t) for t in best.tokens] if best else [],
                           "score": round(float(best.score), 4) if best else None}
    if len(seg.nbest) > 1:
        out["nbest"] = [{"text": h.text, "score": round(float(h.score), 4)} for h in seg.nbest]
    return out


FORMATS: dict[str, Callable[[Result, str, bool], tuple[str, str]]] = {
    "json": _json, "text": _text, "srt": _srt, "vtt": _vtt, "verbose_json": _verbose_json}


def respond(result: Result, response_format: str, language: str, words: bool) -> tuple[str, str]:
    """The body of ``result`` in ``response_format`` and its media type; ``words``: the
    request asked for word timestamps (verbose_json then lists them)."""
    return FORMATS[response_format](result, language, words)
