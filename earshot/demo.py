"""``earshot demo``: synthesise a spoken corpus, train a small model, evaluate it.

The test set is spoken by espeak-ng voices that never occur in training, so the
error rates measure generalisation to new speakers, not memorisation.

    earshot demo --out exp/demo      # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from earshot.config import ExperimentConfig, check, from_dict

log = logging.getLogger(__name__)

# The demo's recipe. Sized so that it trains in minutes on two CPU cores.
DEMO_RECIPE = {
    "model": {
        "features": {"kind": "fbank", "num_mel_bins": 40, "sample_rate": 16000},
        "encoder": {"cnn_channels": [16, 32], "time_pool": [2, 2], "freq_pool": 2,
                    "rnn_type": "gru", "rnn_layers": 2, "rnn_units": 128, "rnn_time_pool": 1,
                    "dnn_layers": 1, "dnn_units": 128, "dropout": 0.1},
        "decoder": {"rnn_type": "gru", "layers": 1, "units": 128, "embedding_dim": 32,
                    "dropout": 0.1, "attention": {"type": "location", "dim": 128}},
    },
    "tokenizer": {"kind": "char", "case": "lower"},
    "loss": {"ctc_weight": 0.4, "label_smoothing": 0.1},
    "optim": {"name": "adam", "lr": 0.002, "grad_clip": 5.0,
              "scheduler": {"type": "newbob", "factor": 0.6, "threshold": 0.01}},
    "data": {"max_duration": 60.0},
    "train": {"epochs": 12, "keep_last": 1, "select_metric": "cer", "average_best": 1},
    "decode": {"beam_size": 1, "ctc_weight": 0.0, "max_len_ratio": 1.0},
}

COLUMNS = ("wer", "cer", "utterances", "substitutions", "deletions", "insertions")
QUICK_SIZES = {"num_train": 24, "num_dev": 6, "num_test": 6}


def demo_config(out_dir: Path, quick: bool = False, seed: int = 0) -> ExperimentConfig:
    data = out_dir / "data"
    recipe = json.loads(json.dumps(DEMO_RECIPE))  # deep copy
    recipe["data"].update(train=str(data / "train.jsonl.gz"), dev=str(data / "dev.jsonl.gz"),
                          test=str(data / "test.jsonl.gz"))
    recipe["train"].update(exp_dir=str(out_dir / "train"), seed=seed)
    if quick:
        recipe["train"]["epochs"] = 1
    cfg = from_dict(ExperimentConfig, recipe)
    check(cfg)
    return cfg


def run_demo(out_dir: str | Path = "exp/demo", quick: bool = False, seed: int = 0) -> dict:
    """Synthesise, train, evaluate; returns the held-out-voice test summary."""
    from earshot.data.synth import synthesize_corpus
    from earshot.inference import evaluate
    from earshot.metrics import format_table
    from earshot.train.tasks.asr import train

    out_dir = Path(out_dir)
    start = time.perf_counter()
    sizes = QUICK_SIZES if quick else {}
    print(f"[1/3] synthesising the demo corpus into {out_dir / 'data'} ...", flush=True)
    synthesize_corpus(out_dir / "data", seed=seed, **sizes)
    t_synth = time.perf_counter() - start

    print("[2/3] training ...", flush=True)
    cfg = demo_config(out_dir, quick=quick, seed=seed)
    for old in (Path(cfg.train.exp_dir), out_dir / "model"):  # a rerun starts afresh
        shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(train(cfg, resume=False), out_dir / "model")
    model_dir = out_dir / "model"
    t_train = time.perf_counter() - start - t_synth

    print("[3/3] evaluating ...", flush=True)
    rows = []
    for split in ("dev", "test"):
        rates = evaluate(model_dir, getattr(cfg.data, split), out_dir / f"eval_{split}",
                         cfg.decode)
        voices = "held-out voices" if split == "test" else "seen voices"
        rows.append({"set": f"{split} ({voices})", **{k: rates.to_dict()[k] for k in COLUMNS}})
    shutil.copyfile(out_dir / "eval_test" / "summary.json", out_dir / "summary.json")
    total = time.perf_counter() - start
    print(format_table(rows))
    print(f"synthesis {t_synth:.0f} s, training {t_train:.0f} s, total {total:.0f} s")
    print(f"model: {model_dir}\nsummary: {out_dir / 'summary.json'}")
    return json.loads((out_dir / "summary.json").read_text())
