"""What transcription returns: a Result per input, made of Segments made of Words.

Positions are integer sample indices at the model's sample rate (``sample_rate``), so an
hour-long recording's times do not drift; ``start``/``end`` give them in seconds.

>>> w = Word("YES", 1600, 8000, 16000, 0.93)
>>> w.start, w.end
(0.1, 0.5)
>>> seg = Segment(0, 16000, 16000, "YES", [w])
>>> r = Result("a.wav", [seg], 16000, 16000)
>>> print(r)
YES
>>> r.words[0].text
'YES'
>>> Result.from_dict(r.to_dict()) == r
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from earshot.decoding.beam_search import Hypothesis

__all__ = ["Hypothesis", "Result", "Segment", "Word"]


class _Timed:
    """``start`` and ``end`` in seconds, from integer sample positions."""

    start_sample: int
    end_sample: int
    sample_rate: int

    @property
    def start(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end(self) -> float:
        return self.end_sample / self.sample_rate


@dataclass
class Word(_Timed):
    """One word: its text, the samples [start_sample, end_sample) it spans and its
    confidence (mean CTC posterior of its tokens' frames, 0-1)."""

    text: str
    start_sample: int
    end_sample: int
    sample_rate: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
                "start_sample": self.start_sample, "end_sample": self.end_sample,
                "confidence": round(self.confidence, 4)}


@dataclass
class Segment(_Timed):
    """A stretch of the input decoded as one utterance: samples [start_sample, end_sample),
    its best text, its words (empty without word timestamps) and its n-best list."""

    start_sample: int
    end_sample: int
    sample_rate: int
    text: str
    words: list[Word] = field(default_factory=list)
    nbest: list[Hypothesis] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3),
                "start_sample": self.start_sample, "end_sample": self.end_sample,
                "text": self.text, "words": [w.to_dict() for w in self.words],
                "nbest": [hypothesis_dict(h) for h in self.nbest]}


@dataclass
class Result:
    """The transcription of one input (a file, an array): ``text``, ``segments``,
    ``words`` and ``nbest``; ``error`` says why an input was not transcribed (its text is
    then empty). ``str(result)`` is its text."""

    id: str
    segments: list[Segment]
    sample_rate: int
    num_samples: int
    error: str | None = None
    reference: str | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def nbest(self) -> list[Hypothesis]:
        """The n-best list of a one-segment input; for several segments, one hypothesis
        joining each segment's best (their own lists are in ``segments``)."""
        if len(self.segments) == 1:
            return self.segments[0].nbest
        best = [s.nbest[0] for s in self.segments if s.nbest]
        if not best:
            return []
        scores: dict[str, float] = {}
        for h in best:
            for k, v in h.scores.items():
                scores[k] = scores.get(k, 0.0) + v
        return [Hypothesis([t for h in best for t in h.tokens], sum(h.score for h in best),
                           scores, self.text)]

    @property
    def hypotheses(self) -> list[Hypothesis]:
        return self.nbest

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "duration": round(self.duration, 3),
                "sample_rate": self.sample_rate, "num_samples": self.num_samples,
                "error": self.error, "reference": self.reference,
                "segments": [s.to_dict() for s in self.segments],
                "nbest": [hypothesis_dict(h) for h in self.nbest]}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Result:
        """The inverse of ``to_dict`` (positions are read from the sample fields)."""
        rate = int(row["sample_rate"])
        segments = [Segment(int(s["start_sample"]), int(s["end_sample"]), rate, s["text"],
                            [Word(w["text"], int(w["start_sample"]), int(w["end_sample"]), rate,
                                  float(w["confidence"])) for w in s["words"]],
                            [Hypothesis(list(h["tokens"]), float(h["score"]),
                                        {k: float(v) for k, v in h["scores"].items()}, h["text"])
                             for h in s["nbest"]])
                    for s in row["segments"]]
        return cls(row["id"], segments, rate, int(row["num_samples"]), row.get("error"),
                   row.get("reference"))


def hypothesis_dict(h: Hypothesis) -> dict[str, Any]:
    return {"text": h.text, "tokens": [int(t) for t in h.tokens], "score": float(h.score),
            "scores": {k: float(v) for k, v in h.scores.items()}}
