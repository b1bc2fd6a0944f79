#!/usr/bin/env bash
# AN4 on a self-supervised encoder: pretrain a small wav2vec 2.0 on every recording here
# (AN4 training speech, all FSDD digits, synthetic espeak-ng speech), fine-tune it with the
# GRU decoder and CTC head, train the LM, evaluate four ways on dev, and print a table
# with the time each stage took. With SCRATCH=1 the same fine-tuning also runs from a
# randomly initialised encoder of the same shape (does pretraining help?).
# Needs the ssl extra (pip install 'earshot[ssl]').
# Usage: bash recipes/an4/run_ssl.sh SHARED_DATA_DIR [key=value ...]   (e.g. ../shared/data)
# key=value overrides reach the fine-tuning (e.g. train.epochs=10).
set -euo pipefail
data=${1:?usage: bash recipes/an4/run_ssl.sh SHARED_DATA_DIR [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
exp=exp/an4_ssl
start=$SECONDS
stamp() { echo "$1 $((SECONDS - start))" >> "$exp.times"; }
mkdir -p exp; rm -f "$exp.times"
$earshot prepare an4 "$data/an4" --out data/an4
$earshot prepare synthetic --out data/synth --utterances 3000
stamp prepared
$earshot pretrain recipes/an4/pretrain.yaml \
  "data.train=[data/an4/train.jsonl.gz,$data/fsdd/recordings,data/synth/train.jsonl.gz]"
stamp pretrained
$earshot train recipes/an4/ssl.yaml "$@"
stamp trained
$earshot train-lm recipes/an4/lm.yaml data.asr_model="$exp/model" train.exp_dir="$exp/lm"
stamp lm
evaluate() {  # MODEL_EXP
  local dev=data/an4/dev.jsonl.gz m=$1
  $earshot evaluate --model "$m/model" --manifest $dev --out "$m/dev_greedy" --beam-size 1 --ctc-weight 0
  $earshot evaluate --model "$m/model" --manifest $dev --out "$m/dev_beam" --beam-size 10 --ctc-weight 0
  $earshot evaluate --model "$m/model" --manifest $dev --out "$m/dev_joint" --beam-size 10 --ctc-weight 0.3
  $earshot evaluate --model "$m/model" --manifest $dev --out "$m/dev_joint_lm" --beam-size 10 \
    --ctc-weight 0.3 --lm "$exp/lm" --lm-weight 0.5
}
evaluate "$exp"
stamp evaluated
runs="$exp"
if [ "${SCRATCH:-0}" = 1 ]; then
  $earshot train recipes/an4/ssl.yaml model.encoder.from_scratch=true train.exp_dir="${exp}_scratch" "$@"
  stamp scratch_trained
  evaluate "${exp}_scratch"
  stamp scratch_evaluated
  runs="$runs ${exp}_scratch"
fi
python3 - "$exp" $runs <<'PY'
import json, sys
exp, runs = sys.argv[1], sys.argv[2:]
for run in runs:
    for name in ("greedy", "beam", "joint", "joint_lm"):
        s = json.load(open(f"{run}/dev_{name}/summary.json"))
        print(f"{run:22s} dev {name:9s} WER {s['wer']:6.2f}  CER {s['cer']:6.2f}")
pre = json.load(open("exp/an4_pretrain/model/earshot_pretraining.json"))
print(f"pretraining: {pre['train_hours']} h of audio, {pre['epochs']} epochs, dev {pre['dev']}")
times = dict(line.split() for line in open(f"{exp}.times"))
print("seconds from the start:", ", ".join(f"{k} {v}" for k, v in times.items()))
PY
