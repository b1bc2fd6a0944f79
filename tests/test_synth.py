"""The espeak-ng binding and the synthetic demo corpus."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.data import synth
from earshot.data.espeak import EspeakError, available_variants, speak
from earshot.data.synth import (HELD_OUT_VOICES, TRAIN_VOICES, UtteranceSpec,
                                make_sentences, render, synthesize_corpus, vocabulary)

TEXT = "seven green boxes in the kitchen"


def _median_f0(wav: np.ndarray, sr: int) -> float:
    """Crude pitch: autocorrelation peak between 60 and 400 Hz over loud frames."""
    lo, hi, f0s = sr // 400, sr // 60, []
    for start in range(0, wav.size - 1024, 512):
        frame = wav[start:start + 1024]
        if frame.std() < 0.05:
            continue
        ac = np.correlate(frame, frame, "full")[1023:]
        f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


def test_speak_returns_finite_audio_at_the_requested_rate():
    for sr in (16000, 8000):
        wav, got_sr = speak(TEXT, sample_rate=sr)
        assert got_sr == sr
        assert wav.dtype == np.float32 and wav.ndim == 1
        # ~6 words at 160 wpm is about 2 s of speech
        assert 1.0 < wav.size / sr < 4.0
        assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
        assert np.abs(wav).max() > 0.05


def test_rate_changes_duration():
    slow, _ = speak(TEXT, rate=100)
    fast, _ = speak(TEXT, rate=250)
    assert slow.size > 1.6 * fast.size


def test_voices_and_pitch_change_the_audio():
    male, sr = speak(TEXT, voice="en-us+m3", pitch=30)
    female, _ = speak(TEXT, voice="en+f2", pitch=70)
    n = min(male.size, female.size)
    assert not np.allclose(male[:n], female[:n], atol=1e-3)
    assert _median_f0(female, sr) > 1.5 * _median_f0(male, sr)
    low, _ = speak(TEXT, voice="en-us", pitch=10)
    high, _ = speak(TEXT, voice="en-us", pitch=90)
    assert _median_f0(high, sr) > 1.2 * _median_f0(low, sr)


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(EspeakError, match="no-such-voice"):
        speak("hello", voice="no-such-voice")


def test_corpus_voices_use_existing_variants():
    variants = set(available_variants())
    assert {"f3", "m2", "m6"} <= variants
    for voice in TRAIN_VOICES + HELD_OUT_VOICES:
        if "+" in voice:
            assert voice.split("+")[1] in variants, voice
    train_variants = {v.partition("+")[2] for v in TRAIN_VOICES}
    assert not train_variants & {v.partition("+")[2] for v in HELD_OUT_VOICES}


def test_sentences_are_distinct_short_and_in_vocabulary():
    sentences = make_sentences(300, np.random.default_rng(1))
    assert len(set(sentences)) == 300
    vocab = vocabulary()
    assert 120 <= len(vocab) <= 400
    for s in sentences:
        words = s.split()
        assert 4 <= len(words) <= 6 and s == s.lower()
        assert set(words) <= vocab


def _spec(tmp_path: Path, **changes) -> UtteranceSpec:
    fields = dict(id="u", split="train", text=TEXT, voice="en-us", rate=160, pitch=50,
                  pitch_range=50, peak=0.5, snr_db=30.0, lead_s=0.2, trail_s=0.1,
                  seed=3, path=str(tmp_path / "u.wav"))
    fields.update(changes)
    return UtteranceSpec(**fields)


def test_render_pads_with_silence_and_adds_light_noise(tmp_path):
    sr = 16000
    spec = _spec(tmp_path)
    wav = render(spec, sr)
    clean, _ = speak(TEXT, sample_rate=sr, seed=3)
    # espeak's pitch flutter carries over between calls: lengths agree to a few ms
    assert abs(wav.size - (clean.size + int(0.2 * sr) + int(0.1 * sr))) < 0.02 * sr
    lead = wav[: int(0.2 * sr)]
    speech = wav[int(0.2 * sr): -int(0.1 * sr)]
    assert lead.std() > 0  # the noise covers the silence too
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(lead**2))
    assert 25 < snr < 35
    assert abs(np.abs(speech).max() - 0.5) < 0.05


def test_render_raises_when_espeak_gives_no_audio(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "speak", lambda *a, **k: (np.zeros(0, np.float32), 16000))
    with pytest.raises(EspeakError, match="no audio"):
        render(_spec(tmp_path), 16000)


def _wav_bytes(cuts) -> list[bytes]:
    return [sf.read(c.recording.sources[0].source, dtype="int16")[0].tobytes() for c in cuts]


def test_synthesize_corpus_writes_wavs_and_manifests(tmp_path):
    from lhotse import CutSet

    cuts = synthesize_corpus(tmp_path / "a", num_train=12, num_dev=4, num_test=4,
                             seed=5, workers=2, verbose=False)
    assert {k: len(v) for k, v in cuts.items()} == {"train": 12, "dev": 4, "test": 4}
    for split, cutset in cuts.items():
        on_disk = CutSet.from_file(tmp_path / "a" / f"{split}.jsonl.gz")
        assert [c.id for c in on_disk] == [c.id for c in cutset]
        for cut in on_disk:
            path = Path(cut.recording.sources[0].source)
            assert path.parent == tmp_path / "a" / "wav" / split
            wav, sr = sf.read(path)
            assert sr == 16000 and wav.size == cut.recording.num_samples
            assert abs(cut.duration - wav.size / sr) < 1e-6
            text = cut.supervisions[0].text
            assert text and text == text.lower()
    speakers = {s: {c.supervisions[0].speaker for c in cuts[s]} for s in cuts}
    assert speakers["test"] <= set(HELD_OUT_VOICES)
    assert speakers["train"] | speakers["dev"] <= set(TRAIN_VOICES)
    assert not speakers["test"] & speakers["train"]
    texts = [c.supervisions[0].text for cs in cuts.values() for c in cs]
    assert len(set(texts)) == len(texts)

    # Same seed -> same texts and bit-identical audio, whatever the worker count.
    again = synthesize_corpus(tmp_path / "b", num_train=12, num_dev=4, num_test=4,
                              seed=5, workers=1, verbose=False)
    for split in cuts:
        assert ([c.supervisions[0].text for c in again[split]]
                == [c.supervisions[0].text for c in cuts[split]])
        assert _wav_bytes(again[split]) == _wav_bytes(cuts[split])


def test_different_seeds_give_different_texts(tmp_path):
    a = synth.plan_corpus(tmp_path, 20, 2, 2, seed=0)
    b = synth.plan_corpus(tmp_path, 20, 2, 2, seed=1)
    assert [s.text for s in a] != [s.text for s in b]
    assert [s.text for s in a] == [s.text for s in synth.plan_corpus(tmp_path, 20, 2, 2, 0)]
