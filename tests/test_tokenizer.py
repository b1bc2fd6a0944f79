"""Character and SentencePiece tokenizers: specials, round trips, unseen text, save/load."""

import json
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earshot.config import TokenizerConfig
from earshot.errors import TokenizerError
from earshot.tokenizer import (CharTokenizer, SentencePieceTokenizer, load_tokenizer,
                               train_tokenizer)

WORDS = ("zero one two three four five six seven eight nine the cat sat on mat "
         "quick brown fox jumps over lazy dog hello world speech model").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(n)]


TRAIN = sentences(300)
HELD_OUT = sentences(20, seed=1)  # new word orders, same characters


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp_tok(request):
    cfg = TokenizerConfig(kind="sentencepiece", vocab_size=50, model_type=request.param)
    return train_tokenizer(TRAIN, cfg)


def test_char_vocabulary_layout():
    tok = train_tokenizer(["Ba a", "c"], TokenizerConfig(kind="char"))
    assert tok.tokens == ["<blank>", "<pad>", "<unk>", "<bos>", "<eos>", " ", "a", "b", "c"]
    assert (tok.blank_id, tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 9
    assert tok.encode("ab c") == [6, 7, 5, 8]


def test_char_round_trip_and_normalisation():
    tok = train_tokenizer(TRAIN, TokenizerConfig(kind="char"))
    for text in TRAIN[:50] + HELD_OUT:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("  The\tCAT \n sat ")) == "the cat sat"
    specials = [tok.bos_id, tok.eos_id, tok.pad_id, tok.blank_id, tok.unk_id]
    assert tok.decode(specials + tok.encode("cat") + specials) == "cat"


@pytest.mark.parametrize("case,expected", [("upper", "HELLO WORLD"), ("keep", "Hello World")])
def test_case_rules(case, expected):
    tok = train_tokenizer(["Hello World"], TokenizerConfig(kind="char", case=case))
    assert tok.normalize(" Hello   World ") == expected
    assert tok.decode(tok.encode("Hello World")) == expected
    assert "<unk>" not in tok.tokens[5:]


def test_char_unknown_characters():
    tok = train_tokenizer(["abc"], TokenizerConfig(kind="char"))
    assert tok.unknown_chars("A bxc!") == {"x", "!"}  # 'A' lower-cases to a known char
    assert tok.encode("axb") == [tok.encode("a")[0], tok.unk_id, tok.encode("b")[0]]
    with pytest.raises(TokenizerError) as err:
        tok.encode("axb!", strict=True)
    assert "'x'" in str(err.value) and "'!'" in str(err.value) and "axb!" in str(err.value)
    assert tok.encode("cab", strict=True) == tok.encode("cab")


def test_char_save_load(tmp_path):
    tok = train_tokenizer(TRAIN, TokenizerConfig(kind="char", case="keep"))
    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta["kind"] == "char" and meta["case"] == "keep"
    assert meta["vocabulary"] == tok.tokens[5:]
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.tokens == tok.tokens and loaded.case == "keep"
    assert loaded.special_ids == tok.special_ids
    assert [loaded.encode(t) for t in HELD_OUT] == [tok.encode(t) for t in HELD_OUT]


def test_sp_specials_distinct_and_named(sp_tok):
    ids = sp_tok.special_ids
    assert len(set(ids.values())) == 5
    assert [sp_tok.tokens[ids[k]] for k in ("blank", "pad", "unk", "bos", "eos")] == \
        ["<blank>", "<pad>", "<unk>", "<bos>", "<eos>"]
    assert sp_tok.vocab_size == 50
    encoded = {i for t in TRAIN for i in sp_tok.encode(t)}
    assert not encoded & set(ids.values())  # specials never come out of text
    assert max(encoded) < sp_tok.vocab_size


def test_sp_round_trip_uses_subwords(sp_tok):
    for text in TRAIN[:50] + HELD_OUT:
        assert sp_tok.decode(sp_tok.encode(text)) == text
    n_chars = sum(len(t) for t in TRAIN)
    n_tokens = sum(len(sp_tok.encode(t)) for t in TRAIN)
    assert n_tokens < 0.8 * n_chars  # pieces longer than one character are in use
    assert sp_tok.decode(sp_tok.encode("The  CAT")) == "the cat"


def test_sp_unknown_characters(sp_tok):
    assert sp_tok.unknown_chars("the cat") == set()
    assert sp_tok.unknown_chars("the ca§t #1") == {"§", "#", "1"}
    assert sp_tok.unk_id in sp_tok.encode("the ca§t")
    assert sp_tok.decode(sp_tok.encode("the ca§t")).replace(" ", "") == "thecat"
    with pytest.raises(TokenizerError, match="'§'.*the ca§t"):
        sp_tok.encode("the ca§t", strict=True)


def test_sp_save_load(sp_tok, tmp_path):
    sp_tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta["kind"] == "sentencepiece" and meta["case"] == "lower"
    assert (tmp_path / "tokenizer.model").is_file()
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.tokens == sp_tok.tokens and loaded.special_ids == sp_tok.special_ids
    assert loaded.config == sp_tok.config
    assert [loaded.encode(t) for t in HELD_OUT] == [sp_tok.encode(t) for t in HELD_OUT]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sp_vocab_too_high_is_lowered_with_warning(model_type):
    cfg = TokenizerConfig(kind="sentencepiece", vocab_size=5000, model_type=model_type)
    with pytest.warns(UserWarning, match="vocab_size=5000"):
        tok = train_tokenizer(TRAIN[:40], cfg)
    assert 5 < tok.vocab_size < 5000
    assert tok.decode(tok.encode(TRAIN[0])) == TRAIN[0]


def test_sp_vocab_too_small_is_a_clear_error():
    cfg = TokenizerConfig(kind="sentencepiece", vocab_size=8)
    with pytest.raises(TokenizerError, match="vocab_size=8 is too small.*at least"):
        train_tokenizer(TRAIN[:40], cfg)


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_empty_training_texts(kind):
    with pytest.raises(TokenizerError, match="empty"):
        train_tokenizer(["", "  \n"], TokenizerConfig(kind=kind))


def test_decode_rejects_out_of_range_ids():
    tok = train_tokenizer(["ab"], TokenizerConfig(kind="char"))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, tok.vocab_size])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json: tokenizer file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "pickle", "case": "lower"}')
    with pytest.raises(TokenizerError, match="tokenizer.json: 'kind'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "char", "case": "lower", "vocabulary": 3}')
    with pytest.raises(TokenizerError, match="'vocabulary'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "sentencepiece", "case": "lower"}')
    with pytest.raises(TokenizerError, match="tokenizer.model: SentencePiece model file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match="tokenizer.model: not a usable"):
        load_tokenizer(tmp_path)


def test_no_warning_when_vocab_fits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = train_tokenizer(TRAIN, TokenizerConfig(kind="sentencepiece", vocab_size=40))
    assert tok.vocab_size == 40


ALPHABET = "abcxyz .!"
CHAR_TOK = CharTokenizer(sorted("abc ."))


@given(st.text(alphabet=ALPHABET, max_size=30))
@settings(max_examples=100, deadline=None)
def test_char_encode_decode_property(text):
    ids = CHAR_TOK.encode(text)
    norm = CHAR_TOK.normalize(text)
    assert len(ids) == len(norm)
    assert CHAR_TOK.unknown_chars(text) == set(norm) - set("abc .")
    # decode drops the unk ids, so known characters come back in order
    assert CHAR_TOK.decode(ids) == "".join(c for c in norm if c in "abc .")
