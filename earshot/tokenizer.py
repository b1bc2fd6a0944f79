"""Text <-> token ids: a character tokenizer and a SentencePiece (unigram / BPE) tokenizer.

Both reserve the same five named special ids first, all distinct:
``<blank>`` = 0 (CTC), ``<pad>`` = 1, ``<unk>`` = 2, ``<bos>`` = 3, ``<eos>`` = 4.
Every text, transcripts and references alike, passes through ``normalize`` (the
tokenizer's ``TextRules``: case, punctuation, numbers, whitespace) before it is encoded,
so scoring sees exactly what the model was trained on; the rules are saved with it.
A saved tokenizer is plain JSON (plus the SentencePiece model file): nothing in it runs code.

>>> from earshot.config import TokenizerConfig
>>> tok = train_tokenizer(["Hello world", "hold"], TokenizerConfig(kind="char"))
>>> tok.decode(tok.encode("HELLO  world"))
'hello world'
>>> tok.encode("hex") == [tok.encode("h")[0], tok.encode("e")[0], tok.unk_id]
True
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from earshot.config import TokenizerConfig
from earshot.errors import TokenizerError
from earshot.text import TextRules

SPECIALS = ("<blank>", "<pad>", "<unk>", "<bos>", "<eos>")  # ids 0..4 in this order
CONFIG_FILE = "tokenizer.json"
SP_MODEL_FILE = "tokenizer.model"


def text_rules(case: str = "lower", punctuation: str = "keep", numbers: str = "keep") -> TextRules:
    """``TextRules``; TokenizerError naming the bad setting."""
    try:
        return TextRules(case, punctuation, numbers)
    except ValueError as err:
        raise TokenizerError(f"tokenizer {err}") from None


class Tokenizer:
    """Common behaviour; subclasses provide the vocabulary and the text <-> id mapping."""

    kind = "base"

    def __init__(self, case: str, blank_id: int, pad_id: int, unk_id: int, bos_id: int, eos_id: int,
                 punctuation: str = "keep", numbers: str = "keep"):
        self.rules = text_rules(case, punctuation, numbers)
        self.case = case
        self.blank_id, self.pad_id, self.unk_id = blank_id, pad_id, unk_id
        self.bos_id, self.eos_id = bos_id, eos_id
        ids = self.special_ids
        assert len(set(ids.values())) == len(ids), f"special ids must be distinct: {ids}"

    # -- to be provided by subclasses -------------------------------------------
    @property
    def tokens(self) -> list[str]:
        """Piece of every id, index = id (for debugging and display)."""
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _known_chars(self) -> frozenset[str]:
        raise NotImplementedError

    def _save_files(self, out_dir: Path) -> dict:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        return {"blank": self.blank_id, "pad": self.pad_id, "unk": self.unk_id,
                "bos": self.bos_id, "eos": self.eos_id}

    @property
    def config(self) -> TokenizerConfig:
        return TokenizerConfig(kind=self.kind, vocab_size=self.vocab_size, **self.rules.as_dict())

    def normalize(self, text: str) -> str:
        """Apply the text rules (numbers, punctuation, case), turn every run of whitespace
        into one space, strip the ends."""
        return self.rules(text)

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of the normalised ``text`` that no token covers (they would become unk)."""
        known = self._known_chars()
        return {c for c in self.normalize(text) if c != " " and c not in known}

    def encode(self, text: str, strict: bool = False) -> list[int]:
        """Normalise and tokenize ``text`` (no bos/eos). Unseen characters become ``unk_id``,
        or with ``strict=True`` raise TokenizerError naming them."""
        if strict:
            unknown = self.unknown_chars(text)
            if unknown:
                listed = " ".join(repr(c) for c in sorted(unknown))
                raise TokenizerError(f"characters not in the tokenizer vocabulary: {listed} "
                                     f"(in text {text!r})")
        return self._encode(self.normalize(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; special ids (blank, pad, unk, bos, eos) are dropped."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        specials = set(self.special_ids.values())
        return self._decode([i for i in ids if i not in specials])

    def save(self, out_dir: str | Path) -> None:
        """Write ``out_dir/tokenizer.json`` (and the kind's own files); JSON only, no pickles."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, **self.rules.as_dict(), **self._save_files(out_dir)}
        (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")

    def __repr__(self) -> str:
        rules = ", ".join(f"{k}={v!r}" for k, v in self.rules.as_dict().items()
                          if k == "case" or v != "keep")
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, {rules})"


class CharTokenizer(Tokenizer):
    """One token per character; the five specials first, then the characters in sorted order."""

    kind = "char"

    def __init__(self, chars: Sequence[str], case: str = "lower", punctuation: str = "keep",
                 numbers: str = "keep"):
        chars = list(chars)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("character vocabulary must hold distinct single characters")
        if set(chars) & set(SPECIALS):
            raise TokenizerError("character vocabulary clashes with the special tokens")
        self._pieces = list(SPECIALS) + chars
        self._ids = {c: i for i, c in enumerate(self._pieces)}
        self._chars = frozenset(chars)
        super().__init__(case, *range(len(SPECIALS)), punctuation=punctuation, numbers=numbers)

    @classmethod
    def train(cls, texts: Iterable[str], case: str = "lower", punctuation: str = "keep",
              numbers: str = "keep") -> CharTokenizer:
        """Vocabulary = every character of the normalised texts (space included)."""
        norm = text_rules(case, punctuation, numbers)
        seen: set[str] = set()
        for text in texts:
            seen.update(norm(text))
        if not seen:
            raise TokenizerError("cannot train a character tokenizer: the training texts are empty")
        return cls(sorted(seen), case, punctuation, numbers)

    @property
    def tokens(self) -> list[str]:
        return list(self._pieces)

    def _encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.unk_id) for c in text]

    def _decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    def _known_chars(self) -> frozenset[str]:
        return self._chars

    def _save_files(self, out_dir: Path) -> dict:
        return {"vocabulary": self._pieces[len(SPECIALS):]}


class SentencePieceTokenizer(Tokenizer):
    """Subword tokenizer backed by a SentencePiece model (unigram or BPE).

    The model is trained with ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>`` at ids 1..4 and
    ``<blank>`` as a control symbol, which lands on the free id 0; control symbols are
    never produced from text, so blank can only come from the model.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, case: str = "lower", model_type: str = "unigram",
                 punctuation: str = "keep", numbers: str = "keep"):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.model_type = model_type
        sp = self._sp
        ids = (sp.piece_to_id(SPECIALS[0]), sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if min(ids) < 0 or len(set(ids)) != len(ids) or not sp.is_control(ids[0]):
            raise TokenizerError(f"SentencePiece model lacks distinct {', '.join(SPECIALS)} pieces "
                                 "(was it trained by earshot?)")
        super().__init__(case, *ids, punctuation=punctuation, numbers=numbers)
        self._pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self._chars = frozenset(c for i, p in enumerate(self._pieces) if self._is_text_piece(i)
                                for c in p.replace("\u2581", " "))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
              case: str = "lower", punctuation: str = "keep",
              numbers: str = "keep") -> SentencePieceTokenizer:
        """Train on the normalised texts, in memory. A vocabulary the texts cannot fill is
        lowered to the largest size SentencePiece accepts, with a warning."""
        norm = text_rules(case, punctuation, numbers)
        lines = [t for t in (norm(x) for x in texts) if t]
        if not lines:
            raise TokenizerError("cannot train a SentencePiece tokenizer: the training texts are empty")
        size = vocab_size
        for _ in range(3):  # a lowered size is normally accepted on the first retry
            try:
                return cls(_train_sp(lines, size, model_type), case, model_type, punctuation, numbers)
            except RuntimeError as err:
                size = _lowered_vocab_size(str(err), vocab_size)
        raise TokenizerError(f"SentencePiece training failed with tokenizer.vocab_size={vocab_size}")

    def _is_text_piece(self, i: int) -> bool:
        return not (self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i))

    @property
    def tokens(self) -> list[str]:
        return list(self._pieces)

    @property
    def config(self) -> TokenizerConfig:
        return TokenizerConfig(kind="sentencepiece", vocab_size=self.vocab_size,
                               model_type=self.model_type, **self.rules.as_dict())

    def _encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def _known_chars(self) -> frozenset[str]:
        return self._chars

    def _save_files(self, out_dir: Path) -> dict:
        (out_dir / SP_MODEL_FILE).write_bytes(self._proto)
        return {"model": SP_MODEL_FILE, "model_type": self.model_type}


def _train_sp(lines: list[str], vocab_size: int, model_type: str) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0,
        # "identity": our own normalize() is the only normalisation, so decode(encode(x)) == x
        normalization_rule_name="identity",
        pad_id=1, unk_id=2, bos_id=3, eos_id=4, control_symbols=[SPECIALS[0]],
        unk_piece=SPECIALS[2], bos_piece=SPECIALS[3], eos_piece=SPECIALS[4], pad_piece=SPECIALS[1],
        num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def _lowered_vocab_size(message: str, asked: int) -> int:
    """Read the size SentencePiece suggests from its error, or turn the error into ours."""
    too_high = re.search(r"Vocabulary size too high.*?<= (\d+)", message)
    if too_high:
        size = int(too_high.group(1))
        warnings.warn(f"tokenizer.vocab_size={asked} is more than the training texts support; "
                      f"using {size}", stacklevel=3)
        return size
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        raise TokenizerError(f"tokenizer.vocab_size={asked} is too small: the characters of the "
                             f"training texts plus the specials need at least {too_small.group(1)}")
    raise TokenizerError(f"SentencePiece training failed: {message}")


def warn_unknown_chars(tokenizer: Tokenizer, texts: Iterable[str], source: str) -> dict[str, int]:
    """Warn (naming ``source``, the characters and how many texts) when texts hold
    characters the tokenizer never saw: they become <unk>, and a model cannot produce
    them. Returns {character: occurrences}."""
    unseen: dict[str, int] = {}
    count = 0
    for text in texts:
        chars = tokenizer.unknown_chars(text)
        count += bool(chars)
        for ch in chars:
            unseen[ch] = unseen.get(ch, 0) + 1
    if count:
        listed = ", ".join(repr(ch) for ch in sorted(unseen, key=unseen.get, reverse=True)[:10])
        logging.getLogger(__name__).warning(
            "%s: %d text(s) contain characters the tokenizer has never seen (%s); they are "
            "mapped to <unk> and no hypothesis can contain them", source, count, listed)
    return unseen


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Build the tokenizer ``cfg`` describes from training transcripts."""
    rules = dict(punctuation=cfg.punctuation, numbers=cfg.numbers)
    if cfg.kind == "char":
        return CharTokenizer.train(texts, cfg.case, **rules)
    if cfg.kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, cfg.vocab_size, cfg.model_type, cfg.case, **rules)
    raise TokenizerError(f"config key 'tokenizer.kind': unknown kind {cfg.kind!r}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read what ``Tokenizer.save`` wrote; TokenizerError naming the file if it is missing or bad."""
    path = Path(directory) / CONFIG_FILE
    meta = _read_meta(path)
    rules = {key: meta.get(key, default) for key, default in
             (("case", "lower"), ("punctuation", "keep"), ("numbers", "keep"))}
    try:
        TextRules(**rules)
    except (ValueError, TypeError) as err:
        raise TokenizerError(f"{path}: {err}") from None
    loader = _LOADERS.get(meta.get("kind"))
    if loader is None:
        raise TokenizerError(f"{path}: 'kind' must be one of {list(_LOADERS)}, got {meta.get('kind')!r}")
    return loader(path, meta, rules)


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer file not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return meta


def _load_char(path: Path, meta: dict, rules: dict) -> CharTokenizer:
    vocab = meta.get("vocabulary")
    if not isinstance(vocab, list) or not all(isinstance(c, str) for c in vocab):
        raise TokenizerError(f"{path}: 'vocabulary' must be a list of characters")
    try:
        return CharTokenizer(vocab, **rules)
    except TokenizerError as err:
        raise TokenizerError(f"{path}: {err}") from None


def _load_sentencepiece(path: Path, meta: dict, rules: dict) -> SentencePieceTokenizer:
    model = path.parent / str(meta.get("model", SP_MODEL_FILE))
    if not model.is_file():
        raise TokenizerError(f"{model}: SentencePiece model file not found")
    try:
        return SentencePieceTokenizer(model.read_bytes(), rules["case"], _model_type(path, meta),
                                      rules["punctuation"], rules["numbers"])
    except (RuntimeError, TokenizerError) as err:
        raise TokenizerError(f"{model}: not a usable SentencePiece model ({err})") from None


def _model_type(path: Path, meta: dict) -> str:
    model_type = meta.get("model_type", "unigram")
    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"{path}: 'model_type' must be 'unigram' or 'bpe', got {model_type!r}")
    return model_type


_LOADERS = {"char": _load_char, "sentencepiece": _load_sentencepiece}
