#!/usr/bin/env bash
# Reproduce the bundled default model (see docs/model-card.md).
# Usage: bash scripts/train-default-model.sh CORPUS_DIR WORK_DIR
#   CORPUS_DIR: MIDI files, e.g. from `notochord-rt corpus build CORPUS_DIR --songs-per-groove 2`
#   WORK_DIR:   where the prepared data and the two training phases go
# Three phases on two CPU threads: 3,600 steps from a narrow time-head start, up to 7,500
# more at half the learning rate from those weights, then up to 5,000 with pulse components
# (time_pulse=8 on the lines of a tracked 16th grid, exponential widths), motif copying
# (pitch_copy=4) and 2 ms time bins added to those weights (one loader worker computes the
# grid lines). On a quiet 2-core machine a
# step takes about 0.43 s with validations (phase 1 measured: 26 min; about 2 h in all);
# the time limits (2,400 + 4,200 + 3,000 s) keep the whole run under 3 hours on a slower
# or busier one, at the cost of fewer steps there (docs/model-card.md).
set -euo pipefail
corpus=${1:?corpus folder}; work=${2:?work folder}
nr=${NOTOCHORD_RT:-notochord-rt}
"$nr" prep "$corpus" --out "$work/prep" -j 2
common=(--batch-size 16 --batch-len 256 --balance ensemble --schedule cosine
        --valid-batches 32 --threads 2 --no-progress)
"$nr" train "$work/prep" -o "$work/phase1" "${common[@]}" \
    --model emb_size=192 --model rnn_hidden=384 --model rnn_layers=1 --model mlp_layers=1 \
    --model time_sharp_init=0.03 --lr 1e-3 --warmup-steps 200 --max-steps 3600 \
    --time-limit 2400 --checkpoint-every 400 --seed 0
"$nr" train "$work/prep" -o "$work/phase2" "${common[@]}" --init-from "$work/phase1" \
    --lr 5e-4 --warmup-steps 100 --max-steps 7500 --time-limit 4200 --checkpoint-every 500 \
    --seed 1
"$nr" train "$work/prep" -o "$work/phase3" "${common[@]}" --init-from "$work/phase2" \
    --model time_pulse=8 --model time_pulse_grid=1 --model time_pulse_gain=10 \
    --model pitch_copy=4 --model time_res=0.002 --lr 3e-4 --warmup-steps 100 --max-steps 5000 \
    --time-limit 3000 --checkpoint-every 500 --num-workers 1 --seed 3
echo "the model: the last $work/phase3/checkpoints/step-*/model.safetensors"
