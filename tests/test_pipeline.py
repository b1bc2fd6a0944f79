"""End to end on synthesised speech: prepare -> train -> evaluate -> transcribe.

Uses the CLI exactly as a user would, and the Python API.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import earshot
from earshot.cli import main
from earshot.errors import AudioError

from conftest import TEXTS  # the corpus and overfit_model fixtures live there


def test_overfit_to_cer_zero_and_report_files(overfit_model, capsys):
    out = overfit_model
    cuts = out / "data" / "cuts.jsonl.gz"
    assert main(["evaluate", "--model", str(out / "exp" / "model"), "--manifest", str(cuts),
                 "--out", str(out / "eval")]) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    for key in ("wer", "cer", "utterances", "substitutions", "deletions", "insertions"):
        assert key in summary
    assert summary["utterances"] == len(TEXTS)
    assert summary["cer"] == 0.0, (out / "eval" / "alignments.txt").read_text()
    rows = [json.loads(line) for line in (out / "exp" / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if row["kind"] == "epoch"]
    assert len(epochs) == 60 and "dev_cer" in rows[-1]
    assert [row["step"] for row in rows if row["kind"] == "step"] == [100]  # log_every: 100


def test_transcribe_cli_and_python_api_agree(overfit_model, corpus, capsys):
    model_dir = overfit_model / "exp" / "model"
    wavs = [str(corpus / f"u{i}.wav") for i in range(len(TEXTS))]
    capsys.readouterr()
    assert main(["transcribe", "--model", str(model_dir)] + wavs) == 0
    printed = [line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()]
    assert printed == TEXTS
    assert [r.text for r in earshot.load_model(model_dir).transcribe(wavs)] == TEXTS


def test_transcribe_reports_bad_files_and_still_transcribes_good_ones(overfit_model, corpus,
                                                                       tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")
    code = main(["transcribe", "--model", str(overfit_model / "exp" / "model"),
                 str(corpus / "u0.wav"), str(bad), str(tmp_path / "missing.flac")])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.wav" in captured.err and "missing.flac" in captured.err
    assert "2 of 3 inputs could not be transcribed" in captured.err
    assert captured.out.strip().endswith(TEXTS[0])
    model = earshot.load_model(overfit_model / "exp" / "model")
    with pytest.raises(AudioError, match="broken.wav"):
        model.transcribe([corpus / "u0.wav", bad], on_error="raise")
    with pytest.raises(AudioError, match="broken.wav"):
        model.transcribe(bad)  # a single input raises
    results = model.transcribe([bad, corpus / "u0.wav"])
    assert "broken.wav" in results[0].error and results[0].text == ""
    assert results[1].error is None and results[1].text == TEXTS[0]


def test_demo_quick_writes_model_data_and_summary(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    demo = tmp_path / "demo"
    assert (demo / "model" / "config.yaml").is_file()
    assert (demo / "model" / "model.safetensors").is_file()
    assert (demo / "data" / "test.jsonl.gz").is_file()
    summary = json.loads((demo / "summary.json").read_text())
    assert {"wer", "cer", "utterances"} <= set(summary)
    assert "held-out voices" in capsys.readouterr().out
    assert main(["plot", str(demo)]) == 0  # the run is in demo/train
    assert (demo / "train" / "plots" / "curves.png").is_file()


@pytest.mark.parametrize("flag, value", [
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--max-len-ratio", "0"),
    ("--length-bonus", "inf"), ("--pre-beam", "-1"), ("--ctc-window", "-5"),
    ("--eos-threshold", "nan"), ("--beam-size", "0"),
])
def test_a_bad_decoding_option_names_the_flag(overfit_model, corpus, capsys, flag, value):
    model_dir = overfit_model / "exp" / "model"
    code = main(["transcribe", "--model", str(model_dir), flag, value, str(corpus / "u0.wav")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: option {flag}:" in err and "Traceback" not in err


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu"])
def test_an_unusable_device_names_the_flag(overfit_model, corpus, capsys, device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    model_dir = overfit_model / "exp" / "model"
    code = main(["transcribe", "--model", str(model_dir), "--device", device, str(corpus / "u0.wav")])
    err = capsys.readouterr().err
    assert code == 2 and "error: option --device:" in err and "Traceback" not in err


@pytest.mark.parametrize("damage, says", [
    ("truncate", "not a readable safetensors file"),
    ("empty", "not a readable safetensors file"),
    ("pickle", "not a readable safetensors file"),
    ("nan", "hold nan or inf"),
])
def test_damaged_weights_are_refused_naming_the_file(overfit_model, corpus, capsys, tmp_path,
                                                      damage, says):
    import pickle
    import shutil

    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "model"
    shutil.copytree(overfit_model / "exp" / "model", model_dir)
    weights = model_dir / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "pickle":
        weights.write_bytes(pickle.dumps({"x": os.getcwd}))
    else:
        tensors = load_file(str(weights))
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        save_file(tensors, str(weights))
    for argv in (["transcribe", "--model", str(model_dir), str(corpus / "u0.wav")],
                 ["evaluate", "--model", str(model_dir), "--manifest",
                  str(overfit_model / "data" / "cuts.jsonl.gz"), "--out", str(tmp_path / "ev")]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and str(weights) in err and "SHA-256 differs" in err
    # Without the checksum manifest (a directory from before it existed) the weights
    # reader itself refuses them.
    (model_dir / "checksums.sha256").unlink()
    for argv in (["transcribe", "--model", str(model_dir), str(corpus / "u0.wav")],
                 ["evaluate", "--model", str(model_dir), "--manifest",
                  str(overfit_model / "data" / "cuts.jsonl.gz"), "--out", str(tmp_path / "ev")]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and str(weights) in err and says in err and "Traceback" not in err


def test_evaluate_on_an_empty_manifest_says_so(overfit_model, capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = main(["evaluate", "--model", str(overfit_model / "exp" / "model"), "--manifest",
                 str(empty), "--out", str(tmp_path / "ev")])
    assert code == 2 and "manifest holds no cuts" in capsys.readouterr().err


def test_evaluate_reports_what_it_could_not_score(overfit_model, corpus, tmp_path, caplog):
    import shutil

    for i in range(len(TEXTS)):
        shutil.copy(corpus / f"u{i}.wav", tmp_path / f"u{i}.wav")
    rows = ["id,path,text"] + [f"u{i},u{i}.wav,{t}" for i, t in enumerate(TEXTS)]
    rows.append(f"odd,u0.wav,{TEXTS[0]} ~")  # a character the model has never seen
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert main(["prepare", "csv", str(tmp_path / "m.csv"), "--out", str(tmp_path / "data")]) == 0
    (tmp_path / "u1.wav").unlink()  # lost after prepare
    assert main(["evaluate", "--model", str(overfit_model / "exp" / "model"), "--manifest",
                 str(tmp_path / "data" / "cuts.jsonl.gz"), "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["manifest_utterances"] == len(TEXTS) + 1
    assert summary["utterances"] == len(TEXTS) and summary["dropped"] == 1
    assert summary["dropped_ids"] == ["u1"] and summary["dropped_reason"] == "audio could not be loaded"
    assert summary["unknown_reference_chars"] == {"~": 1}
    assert "1 of 5 utterances could not be decoded" in caplog.text
    assert "never seen ('~')" in caplog.text


def test_the_cli_parser_is_built_without_torch():
    import subprocess
    import sys

    code = ("import sys; from earshot.cli import build_parser; build_parser(); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # earshot --help is fast


def _benchmark(file: str):
    """A script of benchmarks/ imported as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{Path(file).stem}", f"benchmarks/{file}")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("batch_size", [1, 3])
def test_decode_benchmark_reports_every_mode_and_the_encoder_alone(overfit_model, tmp_path,
                                                                   batch_size, capsys):
    import json

    bench = _benchmark("decode.py")
    out = tmp_path / "rows.json"
    assert bench.main(["--model", str(overfit_model / "exp" / "model"), "--manifest",
                       str(overfit_model / "data" / "cuts.jsonl.gz"), "--batch-size",
                       str(batch_size), "--json", str(out), "--profile", "greedy"]) == 0
    assert "profile of greedy:" in capsys.readouterr().out
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["greedy", "beam10", "beam10+ctc", "encode only"]
    assert rows["greedy"]["relative_to_greedy"] == 1.0
    assert all(r["utt_per_s"] > 0 and r["rtf"] > 0 and r["peak_mem_mb"] > 0 for r in rows.values())


def test_decode_benchmark_takes_each_batchs_fastest_pass_per_runtime():
    bench = _benchmark("decode.py")
    times = {"a": iter([[3.0, 1.0], [1.0, 4.0], [2.0, 2.0]]), "b": iter([[5.0, 5.0]] * 3)}
    order = []

    def run(prefix, model):
        order.append(prefix)
        batch_seconds = next(times[prefix])
        return {"mode": prefix, "seconds": sum(batch_seconds), "batch_seconds": batch_seconds,
                "audio_seconds": 4.0, "utterances": 2, "peak_mem_mb": len(order)}

    a, b = bench.alternate(3, [("a", None), ("b", None)], run)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert (a["seconds"], a["utt_per_s"], a["rtf"], a["peak_mem_mb"]) == (2.0, 1.0, 0.5, 5)
    assert b["seconds"] == 10.0


def test_rnn_kernel_benchmark_times_both_kernels_on_the_same_weights(capsys):
    bench = _benchmark("rnn_kernels.py")
    assert bench.main(["--input", "12", "--units", "8", "--lengths", "3,7", "--repeats", "2",
                       "--threads", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["3", "7"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    assert all(float(row[4]) < 1e-4 for row in rows)  # the two kernels compute the same


def test_search_benchmark_counts_operators_per_step(overfit_model, capsys):
    bench = _benchmark("search.py")
    assert bench.main(["--model", str(overfit_model / "exp" / "model"), "--manifest",
                       str(overfit_model / "data" / "cuts.jsonl.gz"), "--limit", "4",
                       "--count-limit", "2", "--repeats", "2", "--threads", "1"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["greedy", "beam10", "beam10+ctc"]
    ops = {mode: float(cols[0]) for mode, cols in rows.items()}
    assert all(int(cols[1]) > 0 and float(cols[2]) > 0 for cols in rows.values())
    assert ops["greedy"] < ops["beam10"] < ops["beam10+ctc"]  # the CTC scorer adds work


def test_a_path_with_a_tab_or_newline_keeps_the_output_one_line_of_two_fields(overfit_model, corpus,
                                                                              tmp_path, capsys):
    import shutil

    odd = tmp_path / "take\t1\nfinal.wav"
    shutil.copyfile(corpus / "u0.wav", odd)
    capsys.readouterr()
    assert main(["transcribe", "--model", str(overfit_model / "exp" / "model"), str(odd)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].count("\t") == 1
    assert lines[0].split("\t")[0] == str(odd).replace("\t", "\\t").replace("\n", "\\n")
    assert lines[0].split("\t")[1] == TEXTS[0]
