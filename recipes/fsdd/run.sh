#!/usr/bin/env bash
# Prepare, train and evaluate the FSDD recipe.
# Usage: bash recipes/fsdd/run.sh DATA_DIR [--pretrain-an4 AN4_DIR] [key=value ...]
#   --pretrain-an4: first train the same model on AN4 (resampled to 8 kHz; 40 epochs,
#   about 18 min here), then start the FSDD training from it (train.init_from). Five
#   training speakers are few; an encoder that has also heard AN4's 66 generalises
#   better to the held-out speaker.
set -euo pipefail
data=${1:?usage: bash recipes/fsdd/run.sh DATA_DIR [--pretrain-an4 AN4_DIR] [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
$earshot prepare fsdd "$data" --out data/fsdd
if [[ "${1:-}" == --pretrain-an4 ]]; then
  an4=${2:?--pretrain-an4 needs the AN4 data folder}; shift 2
  $earshot prepare an4 "$an4" --out data/an4
  $earshot train recipes/fsdd/crdnn.yaml data.train=data/an4/train.jsonl.gz \
    data.dev=data/an4/dev.jsonl.gz data.max_duration=20 train.epochs=40 train.average_best=1 \
    train.exp_dir=exp/fsdd_an4pre
  set -- train.init_from=exp/fsdd_an4pre/model optim.lr=0.001 train.epochs=30 "$@"
fi
exp=exp/fsdd
for arg in "$@"; do [[ $arg == train.exp_dir=* ]] && exp=${arg#train.exp_dir=}; done
$earshot train recipes/fsdd/crdnn.yaml "$@"
$earshot evaluate --model "$exp/model" --manifest data/fsdd/test.jsonl.gz --out "$exp/test"
