"""Transcription as users call it: long recordings, every input form, outputs, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import earshot
from conftest import TEXTS
from earshot.cli import main
from earshot.errors import AudioError, ConfigError
from earshot.inference import pipeline
from earshot.inference.results import Hypothesis
from earshot.inference.segment import Planned, SegmentOptions, frame_energies, plan

FROZEN = Path(__file__).parent / "data" / "frozen" / "crdnn_v2"  # 8 kHz, untrained-looking


@pytest.fixture(scope="module")
def model(transcriber):
    return transcriber


def _utterances(corpus, rate):
    out = []
    for i in range(len(TEXTS)):
        wav, sr = sf.read(corpus / f"u{i}.wav", dtype="float32")
        assert sr == rate
        out.append(wav)
    return out


def _long_recording(corpus, rate, repeats, seed=0):
    """The four utterances ``repeats`` times, between pauses of 0.7-2 s;
    returns the samples and each utterance's [start, end) sample."""
    rng = np.random.default_rng(seed)
    parts, spans, pos = [], [], 0
    for _ in range(repeats):
        for wav in _utterances(corpus, rate):
            pause = np.zeros(int(rate * rng.uniform(0.7, 2.0)), np.float32)
            parts += [pause, wav]
            spans.append((pos + len(pause), pos + len(pause) + len(wav)))
            pos += len(pause) + len(wav)
    return np.concatenate(parts), spans


# -- segmentation ---------------------------------------------------------------


def test_synthesised_speech_is_cut_at_its_pauses():
    rate, rng = 16000, np.random.default_rng(1)
    speech = [(1.0, 2.5), (3.4, 5.0), (6.5, 7.0), (9.0, 11.5)]  # seconds
    wav = (0.001 * rng.standard_normal(12 * rate)).astype(np.float32)
    t = np.arange(12 * rate) / rate
    for start, end in speech:
        inside = (t >= start) & (t < end)
        wav[inside] += (0.3 * np.sin(2 * np.pi * 220 * t[inside]) * (1 + np.sin(2 * np.pi * 3 * t[inside])) / 2)
    spans = plan(frame_energies(wav, 160), 160, len(wav), rate, SegmentOptions(max_seconds=4.0))
    assert len(spans) == len(speech)
    for span, (start, end) in zip(spans, speech):
        assert abs(span.start / rate - (start - 0.25)) < 0.05 and abs(span.end / rate - (end + 0.25)) < 0.05


def test_speech_without_a_pause_becomes_overlapping_windows_of_one_group():
    rate = 16000
    t = np.arange(5 * rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    wav = np.concatenate([np.zeros(2 * rate, np.float32), tone, np.zeros(2 * rate, np.float32)])
    spans = plan(frame_energies(wav, 160), 160, len(wav), rate, SegmentOptions(max_seconds=2.0))
    assert len(spans) >= 3 and len({s.group for s in spans}) == 1 and spans[0].group >= 0
    for a, b in zip(spans, spans[1:]):
        assert b.start < a.end <= b.end  # overlapping, in order
    assert all(s.end - s.start <= 2 * rate for s in spans)
    assert spans[0].start < 2 * rate <= spans[0].speech[0] and spans[-1].speech[1] <= 7 * rate


def test_segments_read_back_from_a_file_are_its_samples(tmp_path):
    """Spans with gaps longer than a read block, and overlapping ones, across 100 s."""
    rate = 8000
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 100 * rate).astype(np.float32)
    sf.write(tmp_path / "long.wav", wav, rate, subtype="FLOAT")
    spans = [Planned(100, 9000), Planned(8000, 20000), Planned(45 * rate, 46 * rate),
             Planned(95 * rate, 100 * rate)]
    source = pipeline.Source("long.wav", path=tmp_path / "long.wav")
    for span, got in pipeline._slices(source, rate, spans):
        assert np.array_equal(got.numpy(), wav[span.start:span.end]), span


def test_overlapping_windows_merge_at_the_token_level(model):
    rate = model.sample_rate
    a = pipeline._Decoded(Planned(0, 4 * rate, 0), [Hypothesis([5, 6, 7], -1.0, {"ctc": -1.0})], [5, 6, 7],
                          [(0, 100), (int(2.4 * rate), int(2.5 * rate)), (int(3.6 * rate), int(3.7 * rate))],
                          [0.9, 0.8, 0.7])
    b = pipeline._Decoded(Planned(3 * rate, 7 * rate, 0), [Hypothesis([7, 8], -2.0, {"ctc": -0.5})], [7, 8],
                          [(int(3.6 * rate), int(3.7 * rate)), (int(5 * rate), int(5.1 * rate))],
                          [0.6, 0.5])
    merged = pipeline.merge_windows([a, b], model)
    assert merged.nbest[0].tokens == [5, 6, 7, 8]  # 7 (at 3.65 s, past the overlap's middle) from b
    assert merged.confidences == [0.9, 0.8, 0.6, 0.5]
    assert merged.nbest[0].scores == {"ctc": -1.5}
    assert (merged.span.start, merged.span.end) == (0, 7 * rate)


# -- long recordings ---------------------------------------------------------------


def test_a_long_recording_is_transcribed_segment_by_segment_with_times(model, corpus, tmp_path):
    rate = model.sample_rate
    wav, truth = _long_recording(corpus, rate, repeats=3)
    sf.write(tmp_path / "long.flac", wav, rate)
    result = model.transcribe(tmp_path / "long.flac", max_segment_seconds=3.0, word_timestamps=True)
    # (this four-utterance model knows its files exactly; silence around them changes its
    # words, so accuracy is measured by benchmarks/long_audio.py with a real model)
    assert len(result.segments) == len(truth) and all(s.text for s in result.segments)
    for segment, (start, end) in zip(result.segments, truth):
        assert abs(segment.start_sample - start) < 0.3 * rate and abs(segment.end_sample - end) < 0.3 * rate
    words = result.words
    assert [w.text for w in words] == result.text.split()
    starts = [w.start_sample for w in words]
    assert starts == sorted(starts) and all(0 <= w.start_sample <= w.end_sample <= len(wav) for w in words)
    assert all(0.0 <= w.confidence <= 1.0 for w in words)
    same = model.transcribe(wav, sample_rate=rate, max_segment_seconds=3.0)  # an array: the same
    assert same.text == result.text


def test_a_ten_minute_recording_decodes_in_bounded_memory(monkeypatch, tmp_path):
    """Peak tensor size, not wall time: the biggest batch the encoder ever sees is bounded by
    the batch size and the segment length, not by the file's ten minutes."""
    small = earshot.load_model(FROZEN, device="cpu")
    rate, rng = small.sample_rate, np.random.default_rng(0)
    t = np.arange(int(1.5 * rate)) / rate
    burst = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    parts, total = [], 0
    while total < 600 * rate:
        pause = (0.001 * rng.standard_normal(int(rate * rng.uniform(0.6, 1.5)))).astype(np.float32)
        parts += [burst, pause]
        total += len(burst) + len(pause)
    sf.write(tmp_path / "ten.wav", np.concatenate(parts), rate)
    del parts
    biggest, pooled = [0], [0]
    encode = small.model.encode
    monkeypatch.setattr(small.model, "encode",
                        lambda wavs, lens: biggest.__setitem__(0, max(biggest[0], wavs.numel())) or encode(wavs, lens))
    real = pipeline.decode_jobs

    def counting(t_, jobs, s, on_audio):
        pooled[0] = max(pooled[0], sum(len(j.wav) for j in jobs))
        return real(t_, jobs, s, on_audio)

    monkeypatch.setattr(pipeline, "decode_jobs", counting)
    monkeypatch.setattr(pipeline, "POOL_SECONDS", 60.0)
    result = small.transcribe(tmp_path / "ten.wav", max_segment_seconds=5.0, batch_size=4)
    assert result.duration > 599 and len(result.segments) > 100
    assert biggest[0] <= 4 * 5 * rate  # batch_size x the longest segment
    assert pooled[0] <= (60 + 5) * rate  # the pool, plus the segment that filled it


def test_a_minute_of_silence_or_of_noise_transcribes_to_nothing(model):
    rate, rng = model.sample_rate, np.random.default_rng(3)
    for name, wav in (("silence", np.zeros(60 * rate, np.float32)),
                      ("noise", (0.05 * rng.standard_normal(60 * rate)).astype(np.float32))):
        result = model.transcribe(wav, sample_rate=rate)
        assert result.text == "" and result.words == [] and result.duration == 60.0, name


def test_a_batch_out_of_memory_is_split_until_it_fits(model, corpus, monkeypatch):
    encode = model.model.encode

    def tight(wavs, lens):
        if len(wavs) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return encode(wavs, lens)

    monkeypatch.setattr(model.model, "encode", tight)
    results = model.transcribe([corpus / f"u{i}.wav" for i in range(len(TEXTS))])
    assert [r.text for r in results] == TEXTS

    monkeypatch.setattr(model.model, "encode", lambda w, l: (_ for _ in ()).throw(MemoryError()))
    results = model.transcribe([corpus / "u0.wav"])
    assert "ran out of memory" in results[0].error


# -- the Python API ------------------------------------------------------------------


def test_every_input_form_and_mixed_lists(model, corpus):
    rate = model.sample_rate
    path = corpus / "u1.wav"
    wav, _ = sf.read(path, dtype="float32")
    forms = [str(path), path, wav, torch.from_numpy(wav), np.stack([wav, wav])]
    for form in forms:
        result = model.transcribe(form, sample_rate=rate)
        assert result.text == TEXTS[1] and str(result) == TEXTS[1]
    mixed = model.transcribe(forms, sample_rate=rate)
    assert [r.text for r in mixed] == [TEXTS[1]] * len(forms)
    assert mixed[2].id == "<array 2>" and mixed[0].id == str(path)


def test_another_sample_rate_is_resampled(model, corpus):
    import soxr

    wav, rate = sf.read(corpus / "u2.wav", dtype="float32")
    up = soxr.resample(wav, rate, 44100)
    assert model.transcribe(up, sample_rate=44100).text == TEXTS[2]
    sf.write(corpus.parent / "u2-44k.wav", up, 44100)
    assert model.transcribe(corpus.parent / "u2-44k.wav").text == TEXTS[2]
    with pytest.raises(ValueError, match="needs sample_rate="):
        model.transcribe(up)


def test_keywords_reach_the_search(model, corpus):
    one = model.transcribe(corpus / "u0.wav")
    assert len(one.nbest) == 1 and one.nbest[0].scores["attention"] < 0  # greedy has its score
    three = model.transcribe(corpus / "u0.wav", beam_size=3, nbest=3, ctc_weight=0.3)
    assert len(three.nbest) == 3 and set(three.nbest[0].scores) >= {"attention", "ctc"}
    assert three.text == TEXTS[0]


@pytest.mark.parametrize("options, says", [
    (dict(lm_weight=0.5), "lm_weight= 0.5 needs a language model"),
    (dict(nbest=4), "nbest= 4 is above beam_size= 1"),
    (dict(ctc_window=20, ctc_weight=0.0), "ctc_window= limits the CTC prefix score"),
    (dict(max_segment_seconds=0.5), "max_segment_seconds="),
])
def test_options_that_cannot_apply_are_named(model, options, says):
    with pytest.raises(ConfigError, match=says):
        model.transcribe(np.zeros(1600, np.float32), sample_rate=model.sample_rate, **options)


def test_word_timestamps_need_a_trained_ctc_head(model, monkeypatch):
    import dataclasses

    card = dataclasses.replace(model.cfg.card, ctc_weight=0.0)
    monkeypatch.setattr(model, "cfg", dataclasses.replace(model.cfg, card=card))
    with pytest.raises(ConfigError, match="word_timestamps=: word times come from the CTC head"):
        model.transcribe(np.zeros(1600, np.float32), sample_rate=model.sample_rate, word_timestamps=True)


def test_bad_arrays_are_value_errors_naming_the_argument(model):
    rate = model.sample_rate
    cases = [(np.full(800, np.nan, np.float32), "audio: .*NaN"),
             (np.zeros(800, np.int16), "audio: .*int16"),
             (np.zeros((2, 2, 800), np.float32), "audio: .*shape"),
             (np.zeros(0, np.float32), "audio: .*no samples")]
    for wav, says in cases:
        with pytest.raises(ValueError, match=says):
            model.transcribe(wav, sample_rate=rate)
    with pytest.raises(ValueError, match=r"audio\[1\]: .*inf"):
        model.transcribe([np.zeros(800, np.float32), np.full(800, np.inf, np.float32)], sample_rate=rate)


def test_the_model_has_a_useful_repr(model):
    text = repr(model)
    assert "encoder=crdnn" in text and "sample_rate=16000" in text and "tokenizer=char" in text


# -- the command line ---------------------------------------------------------------


def test_lists_folders_stdin_and_every_output_format(model_dir, corpus, tmp_path, capsys):
    folder = tmp_path / "in" / "deeper"
    folder.mkdir(parents=True)
    for i in (0, 1):
        (folder / f"u{i}.wav").write_bytes((corpus / f"u{i}.wav").read_bytes())
    (tmp_path / "list.txt").write_text(f"# two files\n{corpus / 'u2.wav'}\n\n{corpus / 'u3.wav'}\n")
    out = tmp_path / "out"
    code = main(["transcribe", "--model", str(model_dir), "--no-progress", "--recursive",
                 "--word-timestamps", "--output-format", "all", "--output-dir", str(out),
                 str(tmp_path / "in"), f"@{tmp_path / 'list.txt'}"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3]]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"u{i}.{fmt}" for i in range(4) for fmt in ("txt", "json", "srt", "vtt", "tsv"))
    row = json.loads((out / "u2.json").read_text())
    assert row["text"] == TEXTS[2] and [w["text"] for w in row["segments"][0]["words"]] == TEXTS[2].split()
    assert (out / "u3.srt").read_text().startswith("1\n00:00:")
    assert (out / "u3.vtt").read_text().startswith("WEBVTT\n\n00:00:")
    # audio on standard input
    proc = subprocess.run([sys.executable, "-m", "earshot.cli", "transcribe", "--model", str(model_dir),
                           "--device", "cpu", "-"], input=(corpus / "u0.wav").read_bytes(),
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == f"-\t{TEXTS[0]}"


@pytest.mark.parametrize("flags, says", [
    (["--lm-weight", "0.5"], "--lm-weight 0.5 needs a language model: give --lm"),
    (["--nbest", "3"], "--nbest 3 is above --beam-size 1"),
    (["--ctc-window", "10"], "--ctc-window limits the CTC prefix score"),
    (["--output-format", "srt", "--max-words-per-line", "3"], "--max-words-per-line .* --word-timestamps"),
    (["--max-line-width", "30"], "--max-line-width shapes subtitles"),
    (["--output-format", "doc"], "--output-format: unknown format 'doc'"),
])
def test_cli_options_that_cannot_apply_name_the_flag(model_dir, corpus, flags, says, capsys):
    assert main(["transcribe", "--model", str(model_dir), *flags, str(corpus / "u0.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re

    assert re.search(says, err), err


def test_bad_files_get_one_line_each_and_the_rest_go_on(model_dir, corpus, tmp_path, capsys):
    (tmp_path / "text.wav").write_text("not audio at all")
    (tmp_path / "empty.wav").write_bytes(b"")
    good = (corpus / "u1.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(good[:44 + (len(good) - 44) // 2])  # truncated: what is there
    sf.write(tmp_path / "slow.wav", np.zeros(100, np.float32), 1000)
    raw = bytearray((tmp_path / "slow.wav").read_bytes())
    raw[24:28] = (50).to_bytes(4, "little")  # a header claiming 50 Hz
    (tmp_path / "fifty.wav").write_bytes(bytes(raw))
    (tmp_path / "folder.wav").mkdir()
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    bad = ["text.wav", "empty.wav", "fifty.wav", "folder.wav", "pipe.wav", "missing.wav"]
    args = [str(tmp_path / name) for name in bad] + [str(corpus / "u0.wav"), str(tmp_path / "cut.wav")]
    assert main(["transcribe", "--model", str(model_dir), "--no-progress", *args]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    for name in bad:
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert "50 Hz" in captured.err
    assert f"6 of 8 inputs could not be transcribed" in captured.err
    printed = dict(line.split("\t") for line in captured.out.strip().splitlines())
    assert printed[str(corpus / "u0.wav")] == TEXTS[0] and str(tmp_path / "cut.wav") in printed
