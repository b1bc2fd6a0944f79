#!/usr/bin/env bash
# AN4 with the Conformer encoder: prepare, train, train the LM, evaluate four ways on dev,
# and print a table with the time each stage took. One training stage.
# Usage: bash recipes/an4/run_conformer.sh DATA_DIR [key=value ...]   (e.g. ../shared/data/an4)
# key=value overrides reach the training (e.g. train.seed=7 train.exp_dir=exp/c2).
set -euo pipefail
data=${1:?usage: bash recipes/an4/run_conformer.sh DATA_DIR [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
exp=exp/an4_conformer
for arg in "$@"; do [[ $arg == train.exp_dir=* ]] && exp=${arg#train.exp_dir=}; done
start=$SECONDS
stamp() { echo "$1 $((SECONDS - start))" >> "$exp.times"; }
mkdir -p "$(dirname "$exp")"; rm -f "$exp.times"
$earshot prepare an4 "$data" --out data/an4
stamp prepared
$earshot train recipes/an4/conformer.yaml "$@"
stamp trained
$earshot train-lm recipes/an4/lm.yaml data.asr_model="$exp/model" train.exp_dir="$exp/lm"
stamp lm
dev=data/an4/dev.jsonl.gz
$earshot evaluate --model "$exp/model" --manifest $dev --out "$exp/dev_greedy" --beam-size 1 --ctc-weight 0
$earshot evaluate --model "$exp/model" --manifest $dev --out "$exp/dev_beam" --beam-size 10 --ctc-weight 0
$earshot evaluate --model "$exp/model" --manifest $dev --out "$exp/dev_joint" --beam-size 10 --ctc-weight 0.3
$earshot evaluate --model "$exp/model" --manifest $dev --out "$exp/dev_joint_lm" --beam-size 10 \
  --ctc-weight 0.3 --lm "$exp/lm" --lm-weight 0.5
stamp evaluated
python3 - "$exp" <<'PY'
import json, sys
exp = sys.argv[1]
for name in ("greedy", "beam", "joint", "joint_lm"):
    s = json.load(open(f"{exp}/dev_{name}/summary.json"))
    print(f"dev {name:9s} WER {s['wer']:6.2f}  CER {s['cer']:6.2f}")
times = dict(line.split() for line in open(f"{exp}.times"))
print("seconds from the start:", ", ".join(f"{k} {v}" for k, v in times.items()))
PY
