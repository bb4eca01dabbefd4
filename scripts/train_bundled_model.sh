#!/usr/bin/env bash
# Reproduce the bundled toyworld model: generate the toy world, train from scratch, evaluate.
# Usage: bash scripts/train_bundled_model.sh WORKDIR   (needs `clipsearch` on PATH or PYTHONPATH=src)
# About 5 minutes on one H100 (16 CPU cores for drawing and decoding); hours on a laptop CPU.
set -euo pipefail
W=${1:-data/bundled-run}
CS=${CLIPSEARCH:-python -m clipsearch}
$CS toyworld generate "$W/train" --n 100000 --split train --size 64 --seed 0
$CS toyworld generate "$W/test"  --n 2000   --split test  --size 64 --seed 1
$CS toyworld generate "$W/seen"  --n 2000   --split seen  --size 64 --seed 2
$CS train "$W/train/captions.csv" --model toyworld --pretrained none --out "$W/run" \
    --val "$W/test/captions.csv" --eval-every 10 --epochs 30 --batch-size 512 --lr 1e-3 --seed 0 --workers 16
$CS eval "$W/test/captions.csv" --model toyworld --pretrained "$W/run/final.safetensors" --json > "$W/eval_test.json"
$CS eval "$W/seen/captions.csv" --model toyworld --pretrained "$W/run/final.safetensors" --json > "$W/eval_seen.json"
echo "weights: $W/run/final.safetensors -> copy to src/clipsearch/models/toyworld.safetensors"
