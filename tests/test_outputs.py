"""Writers of results: txt, json, srt, vtt and tsv, checked by strict parsers written here."""

import json
import os
import random
import re
import stat

import pytest

from earshot.errors import ConfigError
from earshot.inference.outputs import (FORMATS, expand_formats, format_timestamp, render,
                                       safe_stem, subtitle_cues, unique_stems, write_outputs)
from earshot.inference.results import Hypothesis, Result, Segment, Word

RATE = 16000
HOUR = 3600 * RATE

def time_pattern(sep: str) -> str:
    return r"(\d{2,}):([0-5]\d):([0-5]\d)" + sep + r"(\d{3})"


def ms_of(match: re.Match, first: int) -> int:
    h, m, s, ms = (int(match.group(first + k)) for k in range(4))
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def parse_cues(text: str, style: str) -> list[tuple[int, int, list[str]]]:
    """(start ms, end ms, lines) of each cue; fails on anything that is not strict SRT/VTT."""
    sep = "," if style == "srt" else r"\."
    timing = re.compile(f"^{time_pattern(sep)} --> {time_pattern(sep)}$")
    if style == "vtt":
        assert text.startswith("WEBVTT\n\n")
        text = text[len("WEBVTT\n\n"):]
    if not text:
        return []
    assert text.endswith("\n") and not text.endswith("\n\n")
    cues = []
    for number, block in enumerate(text[:-1].split("\n\n"), 1):
        lines = block.split("\n")
        if style == "srt":
            assert lines.pop(0) == str(number)
        match = timing.match(lines[0])
        assert match, lines[0]
        start, end = ms_of(match, 1), ms_of(match, 5)
        assert lines[1:] and all(line.strip() == line and line for line in lines[1:]), block
        if style == "vtt":
            assert not any("-->" in x or "<" in x for x in lines[1:])
            lines = [x.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for x in lines]
        assert start < end, block
        assert not cues or start >= cues[-1][1], block
        cues.append((start, end, lines[1:]))
    return cues


def check_layout(cues, width=None, words=None, max_lines=2) -> None:
    for _, _, lines in cues:
        assert 1 <= len(lines) <= max_lines
        for line in lines:
            n = len(line.split())
            assert width is None or len(line) <= width or n == 1, line
            assert words is None or n <= words, line


def vocabulary(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.choice([1, 2, 3, 5, 8, 13])))
            for _ in range(n)]


def timed_segment(tokens: list[str], start: int, step: int = 4000) -> Segment:
    words = [Word(t, start + k * step, start + k * step + step * 3 // 4, RATE, 0.9)
             for k, t in enumerate(tokens)]
    return Segment(start, start + len(tokens) * step, RATE, " ".join(tokens), words)


@pytest.fixture
def with_words() -> Result:
    """Three segments with word times past one hour, the middle one long; then an empty one."""
    long = vocabulary(60, seed=1) + ["supercalifragilisticexpialidocious", "&", "<b>"]
    segs = [timed_segment(["HELLO", "THERE"], HOUR - 3 * RATE),
            timed_segment(long, HOUR + 7),
            timed_segment(["BYE"], 2 * HOUR),
            Segment(2 * HOUR + 5 * RATE, 2 * HOUR + 6 * RATE, RATE, "")]
    segs[0].nbest = [Hypothesis([5, 6], -1.5, {"ctc": -2.0}, "HELLO THERE")]
    return Result("/data/x/talk one.wav", segs, RATE, 3 * HOUR)


@pytest.fixture
def without_words() -> Result:
    segs = [Segment(0, RATE, RATE, "YES"),
            Segment(RATE, 2 * RATE, RATE, " "),
            Segment(HOUR + 3, HOUR + 61 * RATE + 5, RATE, " ".join(vocabulary(80, seed=2))),
            Segment(HOUR + 70 * RATE, HOUR + 72 * RATE, RATE, "café\tau\nlait")]
    return Result("<array 0>", segs, RATE, 2 * HOUR)


def test_expand_formats_takes_one_all_or_a_comma_list_and_names_the_option():
    assert expand_formats("all") == FORMATS == ("txt", "json", "srt", "vtt", "tsv")
    assert expand_formats("srt") == ("srt",)
    assert expand_formats(" srt, VTT,srt ") == ("srt", "vtt")
    assert expand_formats("tsv,all") == ("tsv", "txt", "json", "srt", "vtt")
    for bad in ("doc", "", "srt,,vtt", "srt;vtt"):
        with pytest.raises(ConfigError, match=r"option --output-format: .*txt, json, srt, vtt, tsv"):
            expand_formats(bad)
    with pytest.raises(ConfigError, match="--output-format"):
        render(Result("a", [], RATE, 0), "all")


def test_timestamps_are_exact_over_hours_and_round_to_the_nearest_ms():
    samples = (3 * 3600 + 25 * 60 + 7) * RATE + 123 * 16
    assert format_timestamp(samples, RATE) == "03:25:07,123"
    assert format_timestamp(samples, RATE, "vtt") == "03:25:07.123"
    assert format_timestamp(samples + 7, RATE) == "03:25:07,123"  # 0.4375 ms down
    assert format_timestamp(samples + 8, RATE) == "03:25:07,124"  # 0.5 ms up
    rate = 44100  # not a whole number of samples per ms
    last = (100 * 3600 - 1) * rate + 44056  # 0.999 s into the last second of hour 99
    assert format_timestamp(last, rate) == "99:59:59,999"
    assert format_timestamp(100 * 3600 * rate, rate) == "100:00:00,000"
    assert format_timestamp(3661.0005) == "01:01:01,001"
    assert format_timestamp(0.0, style="vtt") == "00:00:00.000"
    for bad in [(-1, RATE), (1.5, RATE), (-0.1, None), (float("nan"), None)]:
        with pytest.raises(ValueError):
            format_timestamp(*bad)
    with pytest.raises(ValueError):
        format_timestamp(0, RATE, "ass")  # type: ignore[arg-type]


@pytest.mark.parametrize("width, words, max_lines", [(None, None, 2), (42, None, 2), (10, None, 1),
                                                     (20, 3, 2), (None, 4, 3), (1, None, 2)])
def test_srt_and_vtt_from_word_times_parse_and_keep_the_limits(with_words, width, words, max_lines):
    opts = dict(max_line_width=width, max_words_per_line=words, max_lines=max_lines)
    srt = parse_cues(render(with_words, "srt", **opts), "srt")
    vtt = parse_cues(render(with_words, "vtt", **opts), "vtt")
    assert srt == vtt
    check_layout(srt, width, words, max_lines)
    assert [w for _, _, lines in srt for x in lines for w in x.split()] == with_words.text.split()
    assert srt[0][0] == 3597000 and srt[-1][1] == 7200188  # BYE ends 3000 samples on: 187.5 ms
    for cue in subtitle_cues(with_words, width, words, max_lines):  # never across two segments
        assert any(s.words and s.words[0].start_sample <= cue.start_sample
                   and cue.end_sample <= s.words[-1].end_sample for s in with_words.segments)
    if width is None and words is None:
        assert len(srt) == 3  # one cue per non-empty segment


def test_a_word_longer_than_the_line_gets_a_line_of_its_own(with_words):
    cues = subtitle_cues(with_words, max_line_width=12, max_lines=4)
    assert ["supercalifragilisticexpialidocious"] in [[x] for c in cues for x in c.lines]
    assert all(len(x) <= 12 for c in cues for x in c.lines if " " in x)


@pytest.mark.parametrize("width, words, max_lines", [(None, None, 2), (42, None, 2), (16, 2, 1),
                                                     (None, 5, 2)])
def test_cues_without_word_times_share_the_segment_by_characters(without_words, width, words,
                                                                  max_lines):
    opts = dict(max_line_width=width, max_words_per_line=words, max_lines=max_lines)
    check_layout(parse_cues(render(without_words, "srt", **opts), "srt"), width, words, max_lines)
    check_layout(parse_cues(render(without_words, "vtt", **opts), "vtt"), width, words, max_lines)
    cues = subtitle_cues(without_words, width, words, max_lines)
    assert [w for c in cues for x in c.lines for w in x.split()] == without_words.text.split()
    long = without_words.segments[2]
    inside = [c for c in cues if long.start_sample <= c.start_sample < long.end_sample]
    assert inside[0].start_sample == long.start_sample and inside[-1].end_sample == long.end_sample
    assert all(a.end_sample == b.start_sample for a, b in zip(inside, inside[1:]))
    assert all(isinstance(c.start_sample, int) and isinstance(c.end_sample, int) for c in cues)
    if width is None and words is None:
        assert len(cues) == 3
    else:
        assert len(inside) > 1
        chars = [sum(len(x) + 1 for x in c.lines) for c in inside]  # durations follow the text
        for c, n in zip(inside, chars):
            share = (long.end_sample - long.start_sample) * n / sum(chars)
            assert abs((c.end_sample - c.start_sample) - share) <= 1


def test_cues_are_strictly_ordered_even_when_times_are_not():
    segs = [Segment(RATE, RATE, RATE, "A B", [Word("A", RATE, RATE, RATE, 1.0),
                                                Word("B", RATE, RATE, RATE, 1.0)]),
            Segment(RATE // 2, 3 * RATE, RATE, "C D E"),
            Segment(5, 5, RATE, "F")]
    result = Result("a.wav", segs, RATE, 3 * RATE)
    for style in ("srt", "vtt"):
        cues = parse_cues(render(result, style, max_words_per_line=1, max_lines=1), style)
        assert [c[2] for c in cues] == [["A"], ["B"], ["C"], ["D"], ["E"], ["F"]]
        assert cues[0][:2] == (1000, 1001)
    rate = 22050  # 1 ms is not a whole number of samples: a cue still lasts >= 1 ms once rounded
    odd = Result("b", [Segment(0, 0, rate, "X"), Segment(0, 0, rate, "Y"),
                       Segment(430, 430, rate, "Z")], rate, 500)  # 430 samples: 19.501 ms
    assert [c[:2] for c in parse_cues(render(odd, "srt"), "srt")] == [(0, 1), (1, 2), (20, 21)]


def test_bad_cue_options_are_named():
    result = Result("a", [Segment(0, RATE, RATE, "A")], RATE, RATE)
    for key, opts in [("max-lines", dict(max_lines=0)), ("max-line-width", dict(max_line_width=-3)),
                      ("max-words-per-line", dict(max_words_per_line=1.5))]:
        with pytest.raises(ConfigError, match=f"option --{key}: expected a positive integer"):
            render(result, "srt", **opts)


def test_txt_tsv_and_empty_results(with_words, without_words):
    assert render(with_words, "txt").splitlines() == [s.text for s in with_words.segments[:3]]
    assert render(without_words, "txt").endswith("café au lait\n")
    empty = Result("e.wav", [Segment(0, RATE, RATE, "")], RATE, RATE)
    assert render(empty, "txt") == render(empty, "srt") == ""
    assert render(empty, "vtt") == "WEBVTT\n\n"
    assert render(empty, "tsv") == "start\tend\ttext\n"
    rows = render(without_words, "tsv").splitlines()
    assert rows[0] == "start\tend\ttext"
    assert rows[1:] == ["0\t1000\tYES", f"3600000\t{3661000}\t{without_words.segments[2].text}",
                        "3670000\t3672000\tcafé au lait"]
    assert all(re.fullmatch(r"\d+\t\d+\t[^\t]+", r) for r in rows[1:])
    assert render(with_words, "tsv").splitlines()[2].startswith("3600000\t")  # 7 samples: 0.4 ms


def test_json_round_trips(with_words, without_words):
    for result in (with_words, without_words):
        text = render(result, "json")
        assert text.endswith("}\n") and text == json.dumps(result.to_dict(), ensure_ascii=False,
                                                           indent=2) + "\n"
        assert Result.from_dict(json.loads(text)).to_dict() == result.to_dict()
    assert "café" in render(without_words, "json")
    assert json.loads(render(with_words, "json"))["segments"][0]["nbest"][0]["tokens"] == [5, 6]


def test_write_outputs_writes_every_format_atomically(tmp_path, with_words, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    out = tmp_path / "new" / "dir"
    paths = write_outputs(with_words, out, "all", max_line_width=30)
    assert [p.name for p in paths] == [f"talk-one.{f}" for f in FORMATS]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files
    for path, fmt in zip(paths, FORMATS):
        assert path.read_text(encoding="utf-8") == render(with_words, fmt, max_line_width=30)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert len(synced) >= len(FORMATS)
    assert write_outputs(with_words, out, ["srt", "vtt"], stem="x y") == [out / "x-y.srt",
                                                                          out / "x-y.vtt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, without_words, monkeypatch):
    (path,) = write_outputs(without_words, tmp_path, "txt")
    assert path.name == "array-0.txt"
    old = path.read_text(encoding="utf-8")
    without_words.segments[0].text = "NO"

    def crash(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_outputs(without_words, tmp_path, "txt")
    assert path.read_text(encoding="utf-8") == old and os.listdir(tmp_path) == [path.name]
    monkeypatch.undo()
    with pytest.raises(ConfigError):  # a bad format is found before anything is written
        write_outputs(without_words, tmp_path / "never", "txt,docx")
    assert not (tmp_path / "never").exists()


def test_results_with_an_error_write_nothing(tmp_path):
    failed = Result("bad.wav", [], RATE, 0, error="unreadable")
    assert write_outputs(failed, tmp_path / "o", "all") == []
    assert not (tmp_path / "o").exists()


def test_stems_are_safe_and_unique(tmp_path):
    assert safe_stem("<array 0>") == "array-0"
    assert safe_stem("/a/b/talk.v2.flac") == "talk.v2"
    assert safe_stem("C:\\rec\\x y.wav") == "x-y"
    assert safe_stem("") == safe_stem("...") == "output"
    assert unique_stems(["x/a.wav", "y/a.wav"]) == ["a", "a-2"]
    assert unique_stems(["x/a.wav", "y/a.wav", "a-2.flac", "z/A.mp3"]) == ["a", "a-3", "a-2", "A-4"]
    assert unique_stems(["<array 0>", "<array 1>"]) == ["array-0", "array-1"]
    ids = ["one/a.wav", "two/a.wav"]
    results = [Result(i, [Segment(0, RATE, RATE, i)], RATE, RATE) for i in ids]
    for result, stem in zip(results, unique_stems(ids)):
        write_outputs(result, tmp_path, "txt", stem=stem)
    assert [(tmp_path / f"{s}.txt").read_text() for s in ("a", "a-2")] == [f"{i}\n" for i in ids]
