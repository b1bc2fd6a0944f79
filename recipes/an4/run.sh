#!/usr/bin/env bash
# Prepare, train and evaluate the AN4 recipe, then compare decoding modes on dev.
# Usage: bash recipes/an4/run.sh DATA_DIR [key=value ...]   (e.g. ../shared/data/an4)
set -euo pipefail
data=${1:?usage: bash recipes/an4/run.sh DATA_DIR [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
$earshot prepare an4 "$data" --out data/an4
$earshot train recipes/an4/crdnn.yaml "$@"
$earshot train-lm recipes/an4/lm.yaml
dev=data/an4/dev.jsonl.gz
$earshot evaluate --model exp/an4/model --manifest $dev --out exp/an4/dev_greedy --beam-size 1 --ctc-weight 0
$earshot evaluate --model exp/an4/model --manifest $dev --out exp/an4/dev_beam --beam-size 10 --ctc-weight 0
$earshot evaluate --model exp/an4/model --manifest $dev --out exp/an4/dev_joint --beam-size 10 --ctc-weight 0.4
$earshot evaluate --model exp/an4/model --manifest $dev --out exp/an4/dev_joint_lm --beam-size 10 --ctc-weight 0.4 \
  --lm exp/an4/lm --lm-weight 0.3
