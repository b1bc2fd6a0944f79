#!/usr/bin/env bash
# Prepare, train and evaluate the fsdd recipe. Usage: bash recipes/fsdd/run.sh DATA_DIR [key=value ...]
set -euo pipefail
data=${1:?usage: bash recipes/fsdd/run.sh DATA_DIR [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
$earshot prepare fsdd "$data" --out data/fsdd
$earshot train recipes/fsdd/crdnn.yaml "$@"
$earshot evaluate --model exp/fsdd/model --manifest data/fsdd/test.jsonl.gz --out exp/fsdd/test
