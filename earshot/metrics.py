"""Word and character error rates, with the alignments behind them (jiwer underneath).

Texts are compared as given, apart from whitespace: runs of whitespace count as one
space and the ends are stripped, so normalise case before scoring (``Tokenizer.normalize``).
CER counts spaces as characters. Rates are percentages of the reference length; when
the references hold no words at all the denominator is taken as 1, so a rate stays a
finite number (each inserted word then counts 100 %) instead of crashing or being inf.

>>> r = error_rates(["the cat sat", "a dog"], ["the hat sat", "a dog ran"])
>>> r.wer, r.substitutions, r.deletions, r.insertions
(40.0, 1, 0, 1)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

SUMMARY_FILE = "summary.json"
ALIGNMENTS_FILE = "alignments.txt"
PER_UTTERANCE_FILE = "per_utterance.jsonl"


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level error counts; ``wer`` and ``cer`` are percentages."""

    wer: float
    cer: float
    utterances: int
    words: int  # reference words
    chars: int  # reference characters, spaces included
    substitutions: int  # word level
    deletions: int
    insertions: int
    char_substitutions: int
    char_deletions: int
    char_insertions: int

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def char_errors(self) -> int:
        return self.char_substitutions + self.char_deletions + self.char_insertions

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Counts:
    """Edit counts of one alignment (one utterance or a sum of them)."""

    ref_len: int
    sub: int
    dele: int
    ins: int

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        return 100.0 * self.errors / max(self.ref_len, 1)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _counts(chunks: list, ref_len: int) -> _Counts:
    sub = sum(c.ref_end_idx - c.ref_start_idx for c in chunks if c.type == "substitute")
    dele = sum(c.ref_end_idx - c.ref_start_idx for c in chunks if c.type == "delete")
    ins = sum(c.hyp_end_idx - c.hyp_start_idx for c in chunks if c.type == "insert")
    return _Counts(ref_len, sub, dele, ins)


def _total(counts: list[_Counts]) -> _Counts:
    return _Counts(*(sum(getattr(c, f) for c in counts) for f in ("ref_len", "sub", "dele", "ins")))


def _check_lengths(refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None):
    if len(refs) != len(hyps) or (ids is not None and len(ids) != len(refs)):
        sizes = f"{len(refs)} references, {len(hyps)} hypotheses"
        sizes += f", {len(ids)} ids" if ids is not None else ""
        raise ValueError(f"need one hypothesis per reference: got {sizes}")


def _align(refs: Sequence[str], hyps: Sequence[str]):
    """(word output, char output, per-utterance word counts, per-utterance char counts)."""
    refs, hyps = [_clean(r) for r in refs], [_clean(h) for h in hyps]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    wc = [_counts(a, len(r)) for a, r in zip(words.alignments, words.references)]
    cc = [_counts(a, len(r)) for a, r in zip(chars.alignments, chars.references)]
    return words, chars, wc, cc


def _rates(wc: list[_Counts], cc: list[_Counts]) -> ErrorRates:
    w, c = _total(wc), _total(cc)
    return ErrorRates(wer=w.rate, cer=c.rate, utterances=len(wc), words=w.ref_len, chars=c.ref_len,
                      substitutions=w.sub, deletions=w.dele, insertions=w.ins,
                      char_substitutions=c.sub, char_deletions=c.dele, char_insertions=c.ins)


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRates:
    """Corpus WER/CER of ``hyps`` against ``refs`` (one hypothesis per reference).

    Empty hypotheses count as deletions, empty references as insertions. No
    utterances at all gives zero rates over zero utterances.
    """
    _check_lengths(refs, hyps)
    if not refs:
        return _rates([], [])
    _, _, wc, cc = _align(refs, hyps)
    return _rates(wc, cc)


# ---------------------------------------------------------------------------
# reports


def write_report(out_dir: str | Path, ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
                 extra: dict | None = None) -> ErrorRates:
    """Score and write ``summary.json``, ``alignments.txt`` and ``per_utterance.jsonl``.

    ``alignments.txt`` lists the utterances worst first (most word errors, then highest
    WER, then id); ``per_utterance.jsonl`` keeps the input order. ``extra`` (e.g. the
    model dir, decoding settings) is merged into the summary; it may not reuse a metric key.
    """
    _check_lengths(refs, hyps, ids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not refs:
        rates, rows, blocks = _rates([], []), [], []
    else:
        words, chars, wc, cc = _align(refs, hyps)
        rates = _rates(wc, cc)
        rows = [_row(i, r, h, w, c) for i, r, h, w, c in zip(ids, refs, hyps, wc, cc)]
        blocks = [_alignment_block(row, words.references[k], words.hypotheses[k], words.alignments[k])
                  for k, row in enumerate(rows)]
        order = sorted(range(len(rows)), key=lambda k: (-rows[k]["errors"], -rows[k]["wer"], str(ids[k])))
        blocks = [blocks[k] for k in order]
    _write_summary(out_dir / SUMMARY_FILE, rates, extra or {})
    (out_dir / ALIGNMENTS_FILE).write_text("".join(blocks), encoding="utf-8")
    with open(out_dir / PER_UTTERANCE_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return rates


def _row(utt_id: str, ref: str, hyp: str, w: _Counts, c: _Counts) -> dict:
    return {"id": utt_id, "ref": _clean(ref), "hyp": _clean(hyp), "wer": w.rate, "cer": c.rate,
            "errors": w.errors, "words": w.ref_len, "substitutions": w.sub, "deletions": w.dele,
            "insertions": w.ins, "char_errors": c.errors, "chars": c.ref_len}


def _write_summary(path: Path, rates: ErrorRates, extra: dict) -> None:
    summary = rates.to_dict()
    clash = sorted(set(extra) & set(summary))
    if clash:
        raise ValueError(f"extra report keys clash with metric keys: {clash}")
    summary.update(extra)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def _alignment_columns(ref: list[str], hyp: list[str], chunks: list) -> list[tuple[str, str, str]]:
    """(ref word, hyp word, mark) per aligned position; '*' fills the missing side."""
    cols = []
    for ch in chunks:
        r, h = ref[ch.ref_start_idx:ch.ref_end_idx], hyp[ch.hyp_start_idx:ch.hyp_end_idx]
        if ch.type == "insert":
            cols += [("*" * len(w), w, "I") for w in h]
        elif ch.type == "delete":
            cols += [(w, "*" * len(w), "D") for w in r]
        else:
            mark = "S" if ch.type == "substitute" else ""
            cols += [(a, b, mark) for a, b in zip(r, h)]
    return cols


def _alignment_block(row: dict, ref: list[str], hyp: list[str], chunks: list) -> str:
    cols = _alignment_columns(ref, hyp, chunks)
    widths = [max(len(a), len(b), len(m)) for a, b, m in cols]

    def line(k: int) -> str:
        return " ".join(col[k].ljust(w) for col, w in zip(cols, widths)).rstrip()

    head = (f"{row['id']}  WER {row['wer']:.2f}% ({row['errors']}/{row['words']} words: "
            f"S={row['substitutions']} D={row['deletions']} I={row['insertions']})  CER {row['cer']:.2f}%")
    return f"{head}\nREF: {line(0)}\nHYP: {line(1)}\n     {line(2)}\n\n"


def format_table(rows: list[dict], float_format: str = "{:.2f}") -> str:
    """Rows of dicts -> an aligned plain-text table (columns in first-seen key order).

    >>> print(format_table([{"set": "dev", "wer": 12.5}, {"set": "test", "wer": 9.0}]))
    set     wer
    ----  -----
    dev   12.50
    test   9.00
    """
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if not columns:
        return ""
    cells = [[_cell(row.get(c, ""), float_format) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows if c in row) for c in columns]
    widths = [max(len(str(c)), *(len(r[k]) for r in cells)) for k, c in enumerate(columns)]

    def fmt(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    lines = [fmt([str(c) for c in columns]), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(r) for r in cells])


def _cell(value, float_format: str) -> str:
    return float_format.format(value) if isinstance(value, float) else str(value)
