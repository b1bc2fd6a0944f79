"""WER/CER counted by hand on small cases, and the files of a scoring report."""

import json

import pytest

from earshot.metrics import ErrorRates, error_rates, format_table, write_report


def test_word_and_char_counts_by_hand():
    # "the cat sat on the mat" -> "the hat sat on mat": cat->hat (S), second "the" dropped (D)
    # "a dog" -> "a dog ran": one inserted word
    r = error_rates(["the cat sat on the mat", "a dog"], ["the hat sat on mat", "a dog ran"])
    assert (r.substitutions, r.deletions, r.insertions) == (1, 1, 1)
    assert r.words == 8 and r.utterances == 2
    assert r.wer == pytest.approx(100 * 3 / 8)
    # chars (spaces count): c->h (S), "the " deleted (4 D), " ran" inserted (4 I)
    assert (r.char_substitutions, r.char_deletions, r.char_insertions) == (1, 4, 4)
    assert r.chars == 22 + 5
    assert r.cer == pytest.approx(100 * 9 / 27)


def test_perfect_and_whitespace_insensitive():
    r = error_rates(["hello  world "], [" hello world"])
    assert r.wer == 0.0 and r.cer == 0.0 and r.words == 2 and r.chars == 11


def test_empty_hypothesis_is_all_deletions():
    r = error_rates(["one two three"], [""])
    assert (r.substitutions, r.deletions, r.insertions) == (0, 3, 0)
    assert r.wer == 100.0 and r.char_deletions == 13 and r.cer == 100.0


def test_empty_reference_counts_insertions_without_crashing():
    r = error_rates(["", "a b"], ["uh", "a b"])
    assert (r.insertions, r.words) == (1, 2)
    assert r.wer == 50.0
    only_empty = error_rates([""], ["uh huh"])
    assert only_empty.insertions == 2 and only_empty.wer == 200.0  # denominator taken as 1
    assert error_rates([""], [""]).wer == 0.0


def test_no_utterances_and_mismatched_lengths():
    r = error_rates([], [])
    assert r.utterances == 0 and r.wer == 0.0
    with pytest.raises(ValueError, match="2 references, 1 hypotheses"):
        error_rates(["a", "b"], ["a"])


def test_to_dict_has_every_field():
    d = error_rates(["a b"], ["a c"]).to_dict()
    assert set(d) == {f for f in ErrorRates.__dataclass_fields__}
    assert d["wer"] == 50.0 and d["substitutions"] == 1


def test_write_report_files(tmp_path):
    ids = ["u1", "u2", "u3"]
    refs = ["the cat sat", "a dog", "hello world"]
    hyps = ["the cat", "a big dog", "hello word"]
    rates = write_report(tmp_path / "rep", ids, refs, hyps, extra={"model": "m1", "beam": 4})
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    for key in ("wer", "cer", "utterances", "substitutions", "deletions", "insertions",
                "words", "chars", "char_substitutions", "char_deletions", "char_insertions"):
        assert summary[key] == rates.to_dict()[key]
    assert summary["model"] == "m1" and summary["beam"] == 4
    assert (summary["substitutions"], summary["deletions"], summary["insertions"]) == (1, 1, 1)
    assert summary["wer"] == pytest.approx(100 * 3 / 7)

    rows = [json.loads(line) for line in (tmp_path / "rep" / "per_utterance.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ids  # input order
    assert rows[0]["errors"] == 1 and rows[0]["deletions"] == 1 and rows[0]["wer"] == pytest.approx(100 / 3)
    assert rows[1]["insertions"] == 1 and rows[1]["wer"] == 50.0
    assert {"id", "ref", "hyp", "wer", "cer", "errors"} <= set(rows[2])

    text = (tmp_path / "rep" / "alignments.txt").read_text()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert [b.split()[0] for b in blocks] == ["u2", "u3", "u1"]  # worst first: errors, then WER, then id
    u1 = next(b for b in blocks if b.startswith("u1")).splitlines()
    assert u1[1].split() == ["REF:", "the", "cat", "sat"]
    assert u1[2].split() == ["HYP:", "the", "cat", "***"]
    assert u1[3].split() == ["D"]
    assert u1[3].index("D") == u1[1].index("sat")  # the mark sits under the word
    u3 = next(b for b in blocks if b.startswith("u3")).splitlines()
    assert u3[3].strip() == "S"


def test_write_report_rejects_clashing_extra(tmp_path):
    with pytest.raises(ValueError, match="wer"):
        write_report(tmp_path, ["u"], ["a"], ["a"], extra={"wer": 0})


def test_format_table_aligns_columns():
    table = format_table([{"set": "dev", "wer": 12.345, "n": 7}, {"set": "test-clean", "wer": 3.0, "n": 120}])
    lines = table.splitlines()
    assert lines[0].split() == ["set", "wer", "n"]
    assert lines[2].split() == ["dev", "12.35", "7"] and lines[3].split() == ["test-clean", "3.00", "120"]
    assert len({len(line) for line in lines[1:]}) == 1  # numbers right-aligned to one width
    assert format_table([]) == ""
