"""Every named choice in earshot, declared once: name -> what builds it.

A config chooses a part by name (``model.encoder.type: conformer``, ``optim.name: adamw``,
``--mode joint``). Each family of names is one ``Table`` here, read both by the config
schema (which names are valid, which config dataclass a name takes) and by the code
that builds the part. Entries point at their implementation as ``"module:attribute"``
strings, imported on first use, so that reading a table (the CLI's ``--help``, config
validation) never imports torch.

A new encoder is one file (its ``nn.Module`` subclass of ``Encoder`` with a ``Config``
dataclass) plus one entry in ``ENCODERS``.

>>> "conformer" in ENCODERS, DECODE_MODES.names[:3]
(True, ('auto', 'greedy', 'beam'))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterator

from earshot.errors import ConfigError


@dataclass(frozen=True)
class Choice:
    """One entry of a table: where its implementation lives and a line of help."""

    target: str  # "package.module:attribute"
    help: str = ""

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Table:
    """Names of one family (``what``: "encoder", "decoding mode") in declaration order."""

    def __init__(self, what: str, entries: dict[str, Choice]):
        self.what = what
        self._entries = dict(entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str, key: str = "") -> Choice:
        """The entry for ``name``; a ConfigError naming ``key`` (a config key or an option)
        and the known names otherwise."""
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.what} {name!r} (known: {', '.join(self.names)})")
        return self._entries[name]

    def load(self, name: str, key: str = "") -> Any:
        """The implementation of ``name`` (class or function), imported now."""
        return self.entry(name, key).load()

    def help(self) -> str:
        """"name: help" for each entry, one line each (for ``--help`` texts)."""
        return "; ".join(f"{name}: {c.help}" if c.help else name for name, c in self._entries.items())


FRONTENDS = Table("front end", {
    "fbank": Choice("earshot.frontends:FilterbankFrontEnd", "log mel filterbank (Kaldi-compatible)"),
    "mfcc": Choice("earshot.frontends:FilterbankFrontEnd", "mel cepstra (Kaldi-compatible)"),
    "waveform": Choice("earshot.frontends:WaveformFrontEnd", "samples as they are (ssl encoders)"),
})

ENCODERS = Table("encoder", {
    "crdnn": Choice("earshot.models.encoders.crdnn:CRDNN", "conv + recurrent + dense"),
    "conformer": Choice("earshot.models.encoders.conformer:Conformer", "Conformer blocks"),
    "ssl": Choice("earshot.models.encoders.ssl:SSLEncoder",
                  "wav2vec 2.0 / HuBERT / WavLM through transformers"),
})

ATTENTIONS = Table("attention type", {
    "content": Choice("earshot.models.attention:ContentAttention", "additive content attention"),
    "location": Choice("earshot.models.attention:LocationAwareAttention",
                       "content + convolved previous weights"),
    "multihead_location": Choice("earshot.models.attention:MultiHeadLocationAttention",
                                 "location-aware, several heads"),
})

DECODE_MODES = Table("decoding mode", {
    "auto": Choice("earshot.decoding.api:auto",
                   "greedy for beam 1 without CTC/LM/length/coverage weights, else beam"),
    "greedy": Choice("earshot.decoding.api:greedy", "attention decoder argmax"),
    "beam": Choice("earshot.decoding.api:beam", "joint CTC/attention beam search (+ LM)"),
    "joint": Choice("earshot.decoding.api:beam", "the same as beam"),
    "ctc_greedy": Choice("earshot.decoding.api:ctc_greedy_mode", "best CTC path, collapsed"),
    "ctc_beam": Choice("earshot.decoding.api:ctc_beam", "CTC prefix beam search"),
    "rescore": Choice("earshot.decoding.api:rescore", "CTC n-best rescored by the attention decoder"),
})

PREPARERS = Table("corpus", {
    "csv": Choice("earshot.data.corpora:prepare_csv", "a CSV file: path,text[,speaker]"),
    "jsonl": Choice("earshot.data.corpora:prepare_jsonl", "a JSONL file, one object per line"),
    "fsdd": Choice("earshot.data.corpora:prepare_fsdd", "Free Spoken Digit Dataset folder"),
    "an4": Choice("earshot.data.corpora:prepare_an4", "CMU AN4 folder (NIST SPHERE or WAV)"),
    "synthetic": Choice("earshot.data.corpora:prepare_synthetic",
                        "spoken English synthesised with espeak-ng (the demo's corpus)"),
    "librispeech": Choice("earshot.data.recipes:prepare_librispeech",
                          "LibriSpeech folder (lhotse recipe): each part, train, dev"),
    "mini_librispeech": Choice("earshot.data.recipes:prepare_mini_librispeech",
                               "Mini LibriSpeech: train-clean-5, dev-clean-2 (lhotse recipe)"),
    "commonvoice": Choice("earshot.data.recipes:prepare_commonvoice",
                          "Common Voice release or language folder (lhotse recipe)"),
    "tedlium": Choice("earshot.data.recipes:prepare_tedlium",
                      "TED-LIUM release 3 folder, one cut per segment (lhotse recipe)"),
    "timit": Choice("earshot.data.recipes:prepare_timit",
                    "TIMIT folder: sentences, lhotse's dev/test speakers (lhotse recipe)"),
    "musan": Choice("earshot.data.recipes:prepare_musan",
                    "MUSAN folder: noise, music, speech for augmentation (lhotse recipe)"),
})

OPTIMIZERS = Table("optimizer", {
    "adam": Choice("earshot.train.optim:adam", "Adam (fused kernel where available)"),
    "adamw": Choice("earshot.train.optim:adamw", "AdamW, decoupled weight decay"),
    "adadelta": Choice("earshot.train.optim:adadelta", "Adadelta (rho 0.95)"),
})

SCHEDULERS = Table("scheduler", {
    "none": Choice("earshot.train.schedulers:ConstantLR", "constant rate"),
    "newbob": Choice("earshot.train.schedulers:NewBob", "decay when the dev metric stalls"),
    "warmup": Choice("earshot.train.schedulers:WarmupDecay", "linear warmup, inverse-sqrt decay"),
    "cosine": Choice("earshot.train.schedulers:WarmupCosine", "linear warmup, cosine decay"),
    "noam": Choice("earshot.train.schedulers:Noam", "the Transformer schedule"),
})

TABLES = (FRONTENDS, ENCODERS, ATTENTIONS, DECODE_MODES, PREPARERS, OPTIMIZERS, SCHEDULERS)
