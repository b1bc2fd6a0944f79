#!/usr/bin/env bash
# Prepare, train and evaluate the AN4 recipe, then compare decoding modes on dev.
# Usage: bash recipes/an4/run.sh DATA_DIR [key=value ...]   (e.g. ../shared/data/an4)
# Training runs in three stages (about 95 min on 2 CPU cores), each starting from the
# previous stage's exported model (train.init_from); key=value overrides reach all three.
set -euo pipefail
data=${1:?usage: bash recipes/an4/run.sh DATA_DIR [key=value ...]}; shift
earshot=${EARSHOT:-earshot}
$earshot prepare an4 "$data" --out data/an4
# 1. two BiGRU layers, 80 epochs, NewBob on the dev loss                    -> exp/an4/model
$earshot train recipes/an4/crdnn.yaml "$@"
# 2. 20 more epochs at a constant lr; export the mean of the 5 best        -> exp/an4_ft/model
$earshot train recipes/an4/crdnn.yaml "$@" train.init_from=exp/an4/model train.exp_dir=exp/an4_ft \
  train.epochs=20 optim.lr=5e-4 optim.scheduler.type=none train.average_best=5 train.keep_last=1
# 3. grow the encoder to three BiGRU layers (the first two and everything else copied,
#    the third new), 40 epochs; export the mean of the 5 best              -> exp/an4_l3/model
$earshot train recipes/an4/crdnn.yaml "$@" train.init_from=exp/an4_ft/model train.exp_dir=exp/an4_l3 \
  model.encoder.rnn_layers=3 train.epochs=40 optim.lr=1e-3 train.average_best=5 train.keep_last=1
$earshot train-lm recipes/an4/lm.yaml
model=exp/an4_l3/model
dev=data/an4/dev.jsonl.gz
$earshot evaluate --model $model --manifest $dev --out exp/an4_l3/dev_greedy --beam-size 1 --ctc-weight 0
$earshot evaluate --model $model --manifest $dev --out exp/an4_l3/dev_beam --beam-size 10 --ctc-weight 0
$earshot evaluate --model $model --manifest $dev --out exp/an4_l3/dev_joint --beam-size 10 --ctc-weight 0.4
$earshot evaluate --model $model --manifest $dev --out exp/an4_l3/dev_joint_lm --beam-size 10 --ctc-weight 0.4 \
  --lm exp/an4/lm --lm-weight 0.3
