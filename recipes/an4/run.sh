#!/usr/bin/env bash
# Prepare, train and evaluate the an4 recipe. Usage: bash recipes/an4/run.sh DATA_DIR [key=value ...]
set -euo pipefail
data=${1:?usage: bash recipes/an4/run.sh DATA_DIR [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
$earshot prepare an4 "$data" --out data/an4
$earshot train recipes/an4/crdnn.yaml "$@"
for m in "greedy --beam-size 1 --ctc-weight 0" "beam --beam-size 10 --ctc-weight 0" "joint --beam-size 10 --ctc-weight 0.4"; do
  set -- $m; name=$1; shift
  $earshot evaluate --model exp/an4/model --manifest data/an4/dev.jsonl.gz --out exp/an4/dev_$name "$@"
done
