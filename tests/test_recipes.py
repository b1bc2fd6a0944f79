"""``earshot prepare`` for the corpora prepared through lhotse's recipes: each on a
miniature folder in the corpus's real layout, its summary, what it skips and why, and
the error for a folder that is not the corpus."""

from __future__ import annotations

import json

import pytest

import corpus_layouts as layouts
from earshot.cli import main
from earshot.data.batching import load_cut_audio
from earshot.data.corpora import format_summary
from earshot.data.manifests import load_cuts
from earshot.errors import ConfigError


def prepare(capsys, name: str, source, out, *flags: str) -> tuple[dict, str]:
    assert main(["prepare", name, str(source), "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    return json.loads((out / "summary.json").read_text()), printed


def utterances(summary: dict) -> dict[str, int]:
    return {split: s["utterances"] for split, s in summary["splits"].items()}


def texts(path) -> dict[str, str]:
    return {c.id: c.supervisions[0].text for c in load_cuts(path)}


def test_librispeech_parts_train_and_dev(tmp_path, capsys):
    src = layouts.librispeech(tmp_path / "src", parts=("train-clean-100", "train-other-500", "dev-clean"))
    summary, printed = prepare(capsys, "librispeech", src, tmp_path / "out")
    assert utterances(summary) == {"train": 8, "dev-clean": 4}  # both train parts together
    assert summary["splits"]["dev-clean"]["speakers"] == 2
    assert summary["skipped"] == {"audio file missing": 3}  # one line per part has no .flac
    assert texts(tmp_path / "out" / "dev-clean.jsonl.gz")["120-2120-0001"] == "HELLO WORLD NUMBER 1"
    # the summary is on screen: the splits, a duration histogram, characters, skipped rows
    assert "dev-clean" in printed and "0-1 s" in printed and "HELLO" not in printed
    assert "skipped 3 rows: audio file missing 3" in printed
    assert "characters (" in printed and "wrote" in printed


def test_librispeech_from_the_folder_above_or_the_corpus_folder(tmp_path, capsys):
    src = layouts.librispeech(tmp_path / "src", parts=("dev-clean",), missing_audio=False)
    a, _ = prepare(capsys, "librispeech", src, tmp_path / "a")
    b, _ = prepare(capsys, "librispeech", src / "LibriSpeech", tmp_path / "b")
    assert a == b and a["skipped"] == {}


def test_mini_librispeech(tmp_path, capsys):
    src = layouts.librispeech(tmp_path / "src", parts=("train-clean-5", "dev-clean-2"))
    summary, _ = prepare(capsys, "mini_librispeech", src, tmp_path / "out")
    assert utterances(summary) == {"train": 4, "dev": 4}


def test_commonvoice_mp3_clips_at_their_own_rates(tmp_path, capsys):
    src = layouts.commonvoice(tmp_path / "src")
    summary, _ = prepare(capsys, "commonvoice", src, tmp_path / "out")
    assert utterances(summary) == {"train": 3, "dev": 2, "test": 2}
    assert summary["skipped"] == {"audio file missing": 1}
    cuts = load_cuts(tmp_path / "out" / "train.jsonl.gz")
    assert sorted(c.sampling_rate for c in cuts) == [24000, 24000, 48000]
    assert cuts[0].supervisions[0].text.startswith("Hello, world")
    assert load_cut_audio(cuts[0], 16000).numel() > 0.4 * 16000  # MP3 decodes
    # pointed at one language's folder, and choosing among several
    one, _ = prepare(capsys, "commonvoice", src / "en", tmp_path / "one")
    assert one["splits"] == summary["splits"]
    layouts.commonvoice(tmp_path / "src", language="cy", missing_audio=False)
    with pytest.raises(ConfigError, match="languages found: cy, en; choose one with --language"):
        _prepare_direct("commonvoice", src, tmp_path / "x")
    cy, _ = prepare(capsys, "commonvoice", src, tmp_path / "cy", "--language", "cy")
    assert cy["splits"]["train"]["utterances"] == 3 and cy["skipped"] == {}


def _prepare_direct(name, src, out, **options):
    from earshot.choices import PREPARERS

    return PREPARERS.load(name)(src, out, **options)


def test_tedlium_one_cut_per_scored_segment(tmp_path, capsys):
    src = layouts.tedlium(tmp_path / "src")
    summary, _ = prepare(capsys, "tedlium", src, tmp_path / "out")
    assert utterances(summary) == {"train": 2, "dev": 2, "test": 2}  # the ignored segment is not a cut
    cuts = sorted(load_cuts(tmp_path / "out" / "train.jsonl.gz"), key=lambda c: c.start)
    assert [(round(c.start, 2), round(c.duration, 2)) for c in cuts] == [(0.1, 1.1), (1.6, 1.3)]
    assert [c.supervisions[0].text for c in cuts] == ["hello there world", "a second segment [NOISE]"]
    assert load_cut_audio(cuts[1], 16000).numel() == round(1.3 * 16000)  # only its stretch


def test_timit_sentences_in_lhotse_speaker_split(tmp_path, capsys):
    src = layouts.timit(tmp_path / "src")
    summary, _ = prepare(capsys, "timit", src, tmp_path / "out")
    assert utterances(summary) == {"train": 2, "dev": 1, "test": 1}
    assert summary["skipped"] == {"transcript file (.TXT/.WRD/.PHN) missing": 1}
    assert set(texts(tmp_path / "out" / "train.jsonl.gz").values()) == {"She had your dark suit."}


def test_musan_noise_music_speech_untranscribed(tmp_path, capsys):
    src = layouts.musan(tmp_path / "src")
    summary, printed = prepare(capsys, "musan", src, tmp_path / "out")
    assert utterances(summary) == {"music": 2, "speech": 2, "noise": 2}
    noise = load_cuts(tmp_path / "out" / "noise.jsonl.gz", need_text=False)
    assert all(c.duration == 1.0 for c in noise)


@pytest.mark.parametrize("name, expected", [
    ("librispeech", "train-clean-100/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt"),
    ("mini_librispeech", "train-clean-5/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt"),
    ("commonvoice", "LANG/clips/, LANG/train.tsv"),
    ("tedlium", "legacy/train/sph/, legacy/train/stm/"),
    ("timit", "data/TRAIN/, data/TEST/"),
    ("musan", "music/, speech/, noise/"),
    ("fsdd", "manifest.csv"),
    ("an4", "manifest_train.csv"),
])
def test_a_folder_of_the_wrong_layout_names_what_it_expected(name, expected, tmp_path, capsys):
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "README").write_text("not a corpus")
    assert main(["prepare", name, str(tmp_path / "wrong"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "wrong") in err and expected in err, err
    assert not (tmp_path / "out").exists()  # nothing written
    assert main(["prepare", name, str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_formats_every_split_and_the_skipped_reasons():
    summary = {"splits": {"train": {"utterances": 2, "hours": 0.001, "speakers": 1,
                                    "shortest_s": 0.5, "longest_s": 31.0,
                                    "duration_histogram": [1, 0, 0, 0, 0, 0, 1],
                                    "characters": " ab"}},
               "skipped": {"empty transcript": 2, "audio unreadable": 1}}
    text = format_summary(summary)
    assert "> 30 s" in text and "characters (3, space included): ab" in text
    assert "skipped 3 rows: empty transcript 2; audio unreadable 1" in text
    assert len(text.splitlines()) <= 24  # one screen
