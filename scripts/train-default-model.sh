#!/usr/bin/env bash
# Reproduce the bundled default model (see docs/model-card.md).
# Usage: bash scripts/train-default-model.sh CORPUS_DIR WORK_DIR
#   CORPUS_DIR: MIDI files, e.g. from `notochord-rt corpus build CORPUS_DIR`
#   WORK_DIR:   where the prepared data and the training run go
set -euo pipefail
corpus=${1:?corpus folder}; work=${2:?work folder}
nr=${NOTOCHORD_RT:-notochord-rt}
"$nr" prep "$corpus" --out "$work/prep" -j 2
"$nr" train "$work/prep" -o "$work/run" \
    --model emb_size=128 --model rnn_hidden=256 --model rnn_layers=1 --model mlp_layers=1 \
    --batch-size 32 --batch-len 64 --lr 1e-3 --schedule cosine --warmup-steps 200 \
    --max-steps 9000 --time-limit 3600 --valid-batches 64 --checkpoint-every 1000 \
    --threads 2 --seed 0 --no-progress
