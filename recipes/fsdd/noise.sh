#!/usr/bin/env bash
# The noise experiment: FSDD trained with and without noise and reverberation
# (recipes/fsdd/noise.yaml; 3 seeds each), tested on the held-out speaker theo clean and
# with noise never heard in training (other AN4 speakers' babble, other noise seeds)
# added at 10 and 5 dB SNR. Prints the table of RESULTS.md.
# Usage: bash recipes/fsdd/noise.sh FSDD_DIR AN4_DIR
set -euo pipefail
fsdd=${1:?usage: bash recipes/fsdd/noise.sh FSDD_DIR AN4_DIR}
an4=${2:?usage: bash recipes/fsdd/noise.sh FSDD_DIR AN4_DIR}
earshot=${EARSHOT:-earshot}
python=${PYTHON:-python3}
here=$(dirname "$0")
$earshot prepare fsdd "$fsdd" --out data/fsdd
$python "$here/make_noise.py" "$an4" --out data/fsdd_noise
for snr in 10 5; do
  $earshot corrupt data/fsdd/test.jsonl.gz --noise data/fsdd_noise/test --snr-db $snr --seed 7 \
    --out data/fsdd/test_snr$snr
done
for seed in 1 2 3; do
  for training in clean noisy; do
    exp=exp/fsdd_noise/$training-$seed
    off=()
    [[ $training == clean ]] && off=(data.noise.prob=0 data.reverb.prob=0)
    $earshot train "$here/noise.yaml" train.seed=$seed train.exp_dir=$exp ${off[@]+"${off[@]}"}
    $earshot evaluate --model $exp/model --manifest data/fsdd/test.jsonl.gz --out $exp/test
    for snr in 10 5; do
      $earshot evaluate --model $exp/model --manifest data/fsdd/test_snr$snr/cuts.jsonl.gz \
        --out $exp/test_snr$snr
    done
  done
done
$python - <<'PY'
import json, statistics
rows = {"clean": "trained clean", "noisy": "trained with noise + reverb"}
print("| training | theo clean | theo + noise 10 dB | theo + noise 5 dB |")
print("|---|---:|---:|---:|")
for training, name in rows.items():
    cells = []
    for test in ("test", "test_snr10", "test_snr5"):
        wers = [json.load(open(f"exp/fsdd_noise/{training}-{s}/{test}/summary.json"))["wer"]
                for s in (1, 2, 3)]
        cells.append(f"{statistics.mean(wers):.1f} ({', '.join(f'{w:.1f}' for w in wers)})")
    print(f"| {name} | " + " | ".join(cells) + " |")
print("WER %, mean of seeds 1-3 (each seed in parentheses), greedy decoding")
PY
