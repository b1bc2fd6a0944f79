#!/usr/bin/env bash
# The FSDD recipe with three seeds; prints the held-out speaker's (theo) test WER of each,
# their mean and spread (min-max).
# Usage: bash recipes/fsdd/seeds.sh DATA_DIR [key=value ...]   (FSDD-only training)
set -euo pipefail
data=${1:?usage: bash recipes/fsdd/seeds.sh DATA_DIR [key=value ...]}; shift
for seed in 1 2 3; do
  bash "$(dirname "$0")/run.sh" "$data" "$@" train.seed=$seed train.exp_dir=exp/fsdd_seed$seed
done
python3 - <<'PY'
import json
wers = [json.load(open(f"exp/fsdd_seed{s}/test/summary.json"))["wer"] for s in (1, 2, 3)]
print("theo test WER by seed:", ", ".join(f"{w:.2f}" for w in wers))
print(f"mean {sum(wers) / 3:.2f}, spread {min(wers):.2f}-{max(wers):.2f}")
PY
