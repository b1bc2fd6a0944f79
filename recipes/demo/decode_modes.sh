#!/usr/bin/env bash
# Compare decoding modes on the demo's held-out-voice test set, and benchmark their speed.
# Usage (after `earshot demo`): bash recipes/demo/decode_modes.sh
set -euo pipefail
earshot=${EARSHOT:-earshot}
python=${PYTHON:-python}
model=exp/demo/model
test=exp/demo/data/test.jsonl.gz
$earshot train-lm recipes/demo/lm.yaml
$earshot evaluate --model $model --manifest $test --out exp/demo/test_greedy --beam-size 1 --ctc-weight 0
$earshot evaluate --model $model --manifest $test --out exp/demo/test_beam --beam-size 10 --ctc-weight 0
$earshot evaluate --model $model --manifest $test --out exp/demo/test_joint --beam-size 10 --ctc-weight 0.4
$earshot evaluate --model $model --manifest $test --out exp/demo/test_joint_lm --beam-size 10 --ctc-weight 0.4 \
  --lm exp/demo/lm --lm-weight 0.3
$python benchmarks/decode.py --model $model --manifest $test --lm exp/demo/lm --json exp/demo/bench_decode.json
