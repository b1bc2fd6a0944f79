"""Transcript normalisation: case, punctuation and numbers, one rule set per model.

A tokenizer holds its ``TextRules`` and applies them to every text it sees, training
transcripts and scoring references alike, and saves them in the model directory, so a
model is always scored on the text it was trained to produce.

>>> TextRules(case="lower", punctuation="strip", numbers="words")("It's 3.5% of 1,200 -- the 21st!")
"it's three point five percent of one thousand two hundred the twenty first"
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

CASES = {"lower": str.lower, "upper": str.upper, "keep": lambda s: s}
PUNCTUATION = ("keep", "strip")
NUMBERS = ("keep", "words")


@dataclass(frozen=True)
class TextRules:
    """``case``: lower | upper | keep; ``punctuation``: keep | strip (apostrophes inside
    words stay); ``numbers``: keep | words (digits spelled out in English). Whitespace
    runs always become one space."""

    case: str = "lower"
    punctuation: str = "keep"
    numbers: str = "keep"

    def __post_init__(self) -> None:
        for name, allowed in (("case", tuple(CASES)), ("punctuation", PUNCTUATION),
                              ("numbers", NUMBERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")

    def __call__(self, text: str) -> str:
        if self.numbers == "words":
            text = spell_numbers(text)
        if self.punctuation == "strip":
            text = strip_punctuation(text)
        return " ".join(CASES[self.case](text).split())

    def as_dict(self) -> dict[str, str]:
        return {"case": self.case, "punctuation": self.punctuation, "numbers": self.numbers}


_APOSTROPHES = "'\u2019"


def strip_punctuation(text: str) -> str:
    """Every punctuation character (Unicode category P*) becomes a space, except an
    apostrophe between two letters (written ')."""
    out = []
    for i, c in enumerate(text):
        if not unicodedata.category(c).startswith("P"):
            out.append(c)
        elif c in _APOSTROPHES and 0 < i < len(text) - 1 and text[i - 1].isalpha() \
                and text[i + 1].isalpha():
            out.append("'")
        else:
            out.append(" ")
    return "".join(out)


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}
# a number: 1,234,567 or 1234, a decimal part, an ordinal suffix or a percent sign
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(st|nd|rd|th|%)?(?!\w)",
                     re.IGNORECASE)


def spell_numbers(text: str) -> str:
    """Digits as English words: cardinals, decimals (point and digits), ordinals (21st),
    percentages; a number with leading zeros (007) or of 16 digits or more is read digit
    by digit."""
    return _NUMBER.sub(_spell_match, text)


def _spell_match(match: re.Match) -> str:
    digits, decimals, suffix = match.group(1).replace(",", ""), match.group(2), match.group(3)
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > 15:
        words = " ".join(_ONES[int(d)] for d in digits)
    else:
        words = cardinal(int(digits))
    if decimals:
        words += " point " + " ".join(_ONES[int(d)] for d in decimals[1:])
    elif suffix and suffix.lower() in ("st", "nd", "rd", "th"):
        words = ordinal(words)
    if suffix == "%":
        words += " percent"
    return f" {words} "


def cardinal(n: int) -> str:
    """0 <= n < 10**15 in words: 1205 -> 'one thousand two hundred five'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {cardinal(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{cardinal(high)} {name}" + (f" {cardinal(rest)}" if rest else "")
    raise AssertionError(n)


def ordinal(words: str) -> str:
    """The ordinal of a spelled cardinal: 'twenty one' -> 'twenty first'."""
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()
