"""Text rules (case, punctuation, numbers): what they do, and that a tokenizer applies
its rules to training texts and references alike and keeps them when saved."""

from __future__ import annotations

import pytest

from earshot.config import TokenizerConfig
from earshot.errors import TokenizerError
from earshot.text import TextRules, cardinal, ordinal, spell_numbers, strip_punctuation
from earshot.tokenizer import load_tokenizer, train_tokenizer


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (99, "ninety nine"),
    (100, "one hundred"), (105, "one hundred five"), (1000, "one thousand"),
    (1999, "one thousand nine hundred ninety nine"), (20_000_001, "twenty million one"),
    (3_000_000_000, "three billion"),
])
def test_cardinals(n, words):
    assert cardinal(n) == words


@pytest.mark.parametrize("text, spelled", [
    ("1st 2nd 3rd 4th 12th 20th 21st 100th", "first second third fourth twelfth twentieth "
                                             "twenty first one hundredth"),
    ("3.14", "three point one four"), ("50%", "fifty percent"), ("1,200", "one thousand two hundred"),
    ("007", "zero zero seven"), ("route 66.", "route sixty six ."),
    ("a4 b52 x1y", "a4 b52 x1y"),  # digits inside words stay
])
def test_spelled_numbers(text, spelled):
    assert " ".join(spell_numbers(text).split()) == spelled


def test_ordinal_of_spelled_words():
    assert ordinal("twenty") == "twentieth" and ordinal("one hundred one") == "one hundred first"


def test_punctuation_becomes_space_but_apostrophes_inside_words_stay():
    assert " ".join(strip_punctuation("Don’t stop—“now”, 'ok'? rock'n'roll!").split()) == \
        "Don't stop now ok rock'n'roll"


def test_rules_in_order_numbers_punctuation_case():
    rules = TextRules(case="upper", punctuation="strip", numbers="words")
    assert rules("It's 2.5 km, i.e. 2,500 m!") == "IT'S TWO POINT FIVE KM I E TWO THOUSAND FIVE HUNDRED M"
    assert TextRules()("  Keep, THIS 1!  ") == "keep, this 1!"  # defaults: lower only
    with pytest.raises(ValueError, match="punctuation must be one of keep, strip"):
        TextRules(punctuation="remove")


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_tokenizer_applies_and_saves_its_rules(kind, tmp_path):
    texts = ["Hello, world: 3 cats!", "It's 12 o'clock.", "twenty one dogs"] * 5
    cfg = TokenizerConfig(kind=kind, vocab_size=30, case="lower", punctuation="strip",
                          numbers="words")
    tok = train_tokenizer(texts, cfg)
    assert tok.normalize("HELLO, 3!") == "hello three"
    assert not tok.unknown_chars("Twelve, 21 cats.")  # digits and punctuation never reach it
    if kind == "char":
        assert "," not in tok.tokens and "3" not in tok.tokens
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.rules == tok.rules and loaded.config == tok.config
    assert loaded.decode(loaded.encode("It's 3 o'clock!")) == "it's three o'clock"


def test_a_saved_tokenizer_with_a_bad_rule_names_the_file(tmp_path):
    import json

    tok = train_tokenizer(["ab"], TokenizerConfig())
    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    meta["numbers"] = "roman"
    (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: numbers must be one of keep, words"):
        load_tokenizer(tmp_path)


def test_a_tokenizer_saved_before_the_rules_existed_keeps_its_behaviour(tmp_path):
    import json

    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "char", "case": "upper",
                                                         "vocabulary": list(" AB,")}))
    tok = load_tokenizer(tmp_path)
    assert tok.rules == TextRules(case="upper") and tok.normalize("a, b 1") == "A, B 1"
