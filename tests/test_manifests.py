"""CSV/JSONL import (validation, skipped rows, paths) and the FSDD / AN4 / CSV splits."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_data

from earshot.data.corpora import prepare_an4, prepare_csv, prepare_fsdd
from earshot.data.manifests import import_csv, import_jsonl, load_cuts, read_manifest
from earshot.errors import ConfigError, ManifestError

RATE = 8000


def tone(path: Path, seconds: float = 0.25, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_relative_paths_and_header_truth(tmp_path):
    tone(tmp_path / "corpus" / "wav" / "a.wav", seconds=0.5)
    manifest = write_csv(tmp_path / "corpus" / "m.csv", "id,path,duration_s,transcript,speaker",
                         ["a,wav/a.wav,9.9,Hello World,spk1"])
    cuts = import_csv(manifest)
    cut = cuts["a"]
    assert cut.recording.sources[0].source == str((tmp_path / "corpus/wav/a.wav").resolve())
    assert cut.recording.sampling_rate == RATE and cut.recording.num_samples == 4000
    assert cut.duration == pytest.approx(0.5)  # from the header, not the 9.9 in the row
    assert cut.supervisions[0].text == "Hello World"
    assert cut.supervisions[0].speaker == "spk1"


def test_csv_audio_root(tmp_path):
    tone(tmp_path / "audio" / "x" / "b.wav")
    manifest = write_csv(tmp_path / "lists" / "m.csv", "id,audio,text", ["b,x/b.wav,yes"])
    cuts = import_csv(manifest, audio_root=tmp_path / "audio")
    assert cuts["b"].recording.sources[0].source == str((tmp_path / "audio/x/b.wav").resolve())
    assert cuts["b"].supervisions[0].speaker is None


def test_jsonl_import_with_aliases(tmp_path):
    tone(tmp_path / "a.wav")
    tone(tmp_path / "b.wav", seconds=0.1)
    lines = [{"id": "a", "audio": "a.wav", "text": "one"},
             {"id": "b", "path": str(tmp_path / "b.wav"), "transcript": "two", "duration": 0.1}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    cuts = import_jsonl(manifest)
    assert sorted(cuts.ids) == ["a", "b"]
    assert cuts["b"].supervisions[0].text == "two"
    assert cuts["b"].recording.num_samples == 800


def test_bad_csv_rows_are_reported_and_skipped(tmp_path, caplog):
    tone(tmp_path / "good.wav")
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), RATE)
    manifest = write_csv(tmp_path / "m.csv", "id,path,text,duration", [
        "good,good.wav,fine,",        # line 2
        "short,good.wav",             # line 3: malformed
        "missing,nope.wav,hi,",       # line 4: missing audio
        "garbage,garbage.wav,hi,",    # line 5: unreadable
        "silent,good.wav,   ,",       # line 6: empty text
        "dur,good.wav,hi,abc",        # line 7: bad duration
        "empty,empty.wav,hi,",        # line 8: zero samples
    ])
    with caplog.at_level(logging.WARNING, logger="earshot.data.manifests"):
        result = read_manifest(manifest)
    assert list(result.cuts.ids) == ["good"]
    assert (result.rows, result.skipped) == (7, 6)
    expected = {3: "malformed row", 4: "file not found", 5: "garbage.wav: cannot read", 6: "empty transcript",
                7: "not a number", 8: "zero samples"}
    for line, reason in expected.items():
        hits = [p for p in result.problems if p.startswith(f"{manifest}:{line}: ")]
        assert len(hits) == 1 and reason in hits[0], (line, result.problems)
    assert all(p in caplog.text for p in result.problems)
    assert "skipped 6 of 7 rows" in caplog.text


def test_bad_jsonl_lines_name_their_line(tmp_path):
    tone(tmp_path / "a.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio": "a.wav", "text": "x"}\n{oops\n[1, 2]\n')
    result = read_manifest(manifest)
    assert result.skipped == 2
    assert result.problems[0].startswith(f"{manifest}:2: malformed JSON")
    assert result.problems[1] == f"{manifest}:3: malformed row: not a JSON object"


def test_all_bad_rows_is_an_error_naming_the_file(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "id,path,text", ["a,none.wav,x", "b,none2.wav,y"])
    with pytest.raises(ManifestError, match=r"m\.csv: no usable rows \(skipped 2 of 2\)"):
        import_csv(manifest)


def test_a_duplicate_id_is_reported_naming_both_lines_and_skipped(tmp_path):
    tone(tmp_path / "a.wav")
    manifest = write_csv(tmp_path / "m.csv", "id,path,text", ["a,a.wav,x", "b,a.wav,y", "a,a.wav,z"])
    result = read_manifest(manifest)
    assert sorted(result.cuts.ids) == ["a", "b"] and result.cuts["a"].supervisions[0].text == "x"
    assert len(result.problems) == 1
    assert re.fullmatch(r".*m\.csv:4: duplicate id 'a' \(first at .*m\.csv:2\); this row is skipped",
                        result.problems[0])


def test_jsonl_rows_with_lists_bad_durations_or_sub_frame_audio_are_skipped(tmp_path):
    tone(tmp_path / "a.wav")
    sf.write(tmp_path / "click.wav", np.zeros(10, dtype=np.float32), RATE)
    rows = [{"id": "ok", "audio": "a.wav", "text": "fine"},
            {"id": "list", "audio": "a.wav", "text": ["a", "b"]},
            {"id": "nan", "audio": "a.wav", "text": "x", "duration": "nan"},
            {"id": "neg", "audio": "a.wav", "text": "x", "duration": -1},
            {"id": "click", "audio": "click.wav", "text": "x"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_manifest(manifest)
    assert list(result.cuts.ids) == ["ok"]
    reasons = [p.split(": ", 1)[1] for p in result.problems]
    assert "'text' must be a string or a number, got list" in reasons[0]
    assert "must be a positive number of seconds" in reasons[1] and "positive" in reasons[2]
    assert "10 samples" in reasons[3] and "shorter than one 25 ms frame" in reasons[3]


def test_the_format_asked_for_must_match_the_file_name(tmp_path):
    tone(tmp_path / "a.wav")
    manifest = write_csv(tmp_path / "x.csv", "id,path,text", ["a,a.wav,x"])
    with pytest.raises(ManifestError, match=r"x\.csv: asked to read it as JSONL.*prepare csv"):
        prepare_csv(manifest, tmp_path / "out", kind=".jsonl")


def test_header_without_required_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "id,path", ["a,a.wav"])
    with pytest.raises(ManifestError, match=r"m\.csv:1: header lacks column\(s\) text or transcript"):
        import_csv(manifest)


def test_load_cuts_errors(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_cuts(tmp_path / "nothing.jsonl.gz")
    corrupt = tmp_path / "bad.jsonl.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ManifestError, match=r"bad\.jsonl\.gz: not a readable CutSet"):
        load_cuts(corrupt)


def _fake_fsdd(root: Path) -> None:
    rows = []
    for speaker in ("theo", "george", "jackson"):
        for digit, word in ((0, "zero"), (1, "one")):
            for index in (0, 44, 45, 49):
                uid = f"{digit}_{speaker}_{index}"
                tone(root / "recordings" / f"{uid}.wav", seconds=0.05)
                rows.append(f"{uid},recordings/{uid}.wav,0.05,{word}")
    write_csv(root / "manifest.csv", "id,path,duration_s,transcript", rows)


def test_fsdd_split_logic(tmp_path):
    _fake_fsdd(tmp_path / "fsdd")
    splits = prepare_fsdd(tmp_path / "fsdd", tmp_path / "out")
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "dev": 8, "test": 8}
    assert {c.supervisions[0].speaker for c in splits["test"]} == {"theo"}
    assert {c.id.split("_")[2] for c in splits["dev"]} == {"45", "49"}
    assert {c.id.split("_")[2] for c in splits["train"]} == {"0", "44"}
    reloaded = load_cuts(tmp_path / "out" / "dev.jsonl.gz")
    assert sorted(reloaded.ids) == sorted(splits["dev"].ids)
    assert {c.supervisions[0].speaker for c in reloaded} == {"george", "jackson"}


def _fake_an4(root: Path, speakers: int = 10, per_speaker: int = 3) -> None:
    rows = []
    for s in range(speakers):
        for u in range(per_speaker):
            uid = f"an{u}-spk{s}-b"
            tone(root / "wav" / f"{uid}.wav", seconds=0.05, rate=16000)
            rows.append(f"{uid},wav/{uid}.wav,0.05,YES,spk{s}")
    write_csv(root / "manifest_train.csv", "id,path,duration_s,transcript,speaker", rows)


def test_an4_speaker_disjoint_deterministic_dev(tmp_path, caplog):
    _fake_an4(tmp_path / "an4")
    with caplog.at_level(logging.INFO, logger="earshot.data"):
        first = prepare_an4(tmp_path / "an4", tmp_path / "o1", dev_speakers=2)
    again = prepare_an4(tmp_path / "an4", tmp_path / "o2", dev_speakers=2)
    assert set(first) == {"train", "dev"} and len(first["dev"]) == 6 and len(first["train"]) == 24
    dev_spk = {c.supervisions[0].speaker for c in first["dev"]}
    assert len(dev_spk) == 2 and not dev_spk & {c.supervisions[0].speaker for c in first["train"]}
    assert sorted(again["dev"].ids) == sorted(first["dev"].ids)
    assert "no test split" in caplog.text
    assert (tmp_path / "o1" / "train.jsonl.gz").is_file()
    with pytest.raises(ConfigError, match="dev_speakers"):
        prepare_an4(tmp_path / "an4", tmp_path / "o3", dev_speakers=10)


def test_prepare_csv_single_and_speaker_split(tmp_path):
    _fake_an4(tmp_path / "c", speakers=5, per_speaker=4)
    manifest = tmp_path / "c" / "manifest_train.csv"
    single = prepare_csv(manifest, tmp_path / "o1")
    assert list(single) == ["cuts"] and len(single["cuts"]) == 20
    assert (tmp_path / "o1" / "cuts.jsonl.gz").is_file()
    split = prepare_csv(manifest, tmp_path / "o2", dev_fraction=0.2)
    assert len(split["dev"]) == 4  # one whole speaker
    assert len({c.supervisions[0].speaker for c in split["dev"]}) == 1


def test_real_fsdd_split_counts(tmp_path):
    root = shared_data("fsdd")
    splits = prepare_fsdd(root, tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2250, "dev": 250, "test": 500}
    assert {c.supervisions[0].speaker for c in splits["test"]} == {"theo"}
    assert "theo" not in {c.supervisions[0].speaker for c in splits["train"]}


def test_real_an4_dev_is_about_ten_percent(tmp_path):
    root = shared_data("an4")
    splits = prepare_an4(root, tmp_path, dev_speakers=8)
    train, dev = splits["train"], splits["dev"]
    assert len(train) + len(dev) == 948
    assert 0.05 < len(dev) / 948 < 0.15
    dev_spk = {c.supervisions[0].speaker for c in dev}
    assert len(dev_spk) == 8 and not dev_spk & {c.supervisions[0].speaker for c in train}


def test_csv_with_byte_order_mark_and_non_utf8(tmp_path):
    tone(tmp_path / "a.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("id,path,text\na,a.wav,caf\u00e9\n".encode("utf-8-sig"))
    assert import_csv(manifest)["a"].supervisions[0].text == "caf\u00e9"
    manifest.write_bytes("id,path,text\na,a.wav,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"m\.csv: no usable rows \(skipped 1 of 1\)"):
        import_csv(manifest)  # the row is reported by line and skipped (see below)


def test_rows_with_bad_bytes_overlong_fields_or_control_characters_are_skipped_by_line(tmp_path):
    for i in range(4):
        tone(tmp_path / f"u{i}.wav")
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbfid,path,text\n"
                     b"u0,u0.wav,caf\xe9\n"                       # line 2: Latin-1, not UTF-8
                     b"u1,u1.wav," + b"x" * 200_000 + b"\n"          # line 3: a 200 KB field
                     b"u2,u2.wav,ring \x07 the bell\n"              # line 4: BEL
                     + "u3,u3.wav,good \u202e text\n".encode()     # line 5: a bidi override
                     + b"u4,u0.wav,fine\n")
    result = read_manifest(path)
    assert list(result.cuts.ids) == ["u4"]
    reasons = "\n".join(result.problems)
    assert "m.csv:2: malformed row: field 'text' holds bytes that are not UTF-8" in reasons
    assert "m.csv:3: malformed row: field 'text' is 200000 characters long" in reasons
    assert "m.csv:4: transcript holds the control character U+0007 at position 6" in reasons
    assert "m.csv:5: transcript holds the control character U+202E" in reasons


def test_jsonl_accepts_a_byte_order_mark_and_skips_a_line_that_is_not_utf8(tmp_path):
    for i in range(2):
        tone(tmp_path / f"u{i}.wav")
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "u0", "path": "u0.wav", "text": "one"}\n'
                     + b'{"id": "u1", "path": "u1.wav", "text": "caf\xe9"}\n')
    result = read_manifest(path)
    assert list(result.cuts.ids) == ["u0"]
    assert result.problems == [f"{path}:2: malformed row: byte 44 is not UTF-8 text"]


def test_a_dev_fraction_that_empties_a_split_writes_nothing(tmp_path):
    for i in range(5):  # no speakers: a random split
        tone(tmp_path / f"u{i}.wav")
    manifest = write_csv(tmp_path / "m.csv", "id,path,text", [f"u{i},u{i}.wav,word" for i in range(5)])
    with pytest.raises(ConfigError, match=r"--dev-fraction\) 0\.99 leaves the train split empty"):
        prepare_csv(manifest, tmp_path / "o", dev_fraction=0.99)
    assert not (tmp_path / "o").exists()
