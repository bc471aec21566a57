#!/usr/bin/env bash
# Reproduce the bundled default model (see docs/model-card.md).
# Usage: bash scripts/train-default-model.sh CORPUS_DIR WORK_DIR [extra `train` flags]
#   CORPUS_DIR: MIDI files, e.g. from `notochord-rt corpus build CORPUS_DIR --songs-per-groove 2`,
#               or a folder already prepared by `notochord-rt prep` (it has train/ and valid/)
#   WORK_DIR:   where the prepared data, the five training phases and times.txt (each
#               phase's wall time) go; a phase times.txt lists is skipped, so a run cut
#               short resumes when started again (a phase it cut short starts over)
#   extra flags are added to every phase's `notochord-rt train` and win over the script's
#   (the test suite runs it with --max-steps 2 and small batches)
# Five phases on two CPU threads, each from the last one's weights, the additions one at a
# time as the bundled weights got them: 3,600 steps from a narrow time-head start; up to
# 3,300 more at half the learning rate; up to 4,000 with the time additions (pulse
# components on the lines of a tracked 16th grid, time_pulse=8, exponential widths, 2 ms
# time bins; one loader worker computes the grid lines); up to 4,500 with motif copying
# (pitch_copy=4); up to 1,500 more at half that rate. The time limits (2,100 + 1,800 +
# 2,700 + 3,000 + 1,100 s = 2 h 58 min) keep the whole run under 3 hours on a slower or
# busier machine, at the cost of fewer steps there (docs/model-card.md has the measured
# times).
set -euo pipefail
corpus=${1:?corpus folder}; work=${2:?work folder}
shift 2
nr=${NOTOCHORD_RT:-notochord-rt}
mkdir -p "$work"
if [ -d "$corpus/train" ] && [ -d "$corpus/valid" ]; then
    prep="$corpus"
else
    prep="$work/prep"
    "$nr" prep "$corpus" --out "$prep" -j 2
fi
common=(--batch-size 16 --batch-len 256 --balance ensemble --schedule cosine
        --valid-batches 32 --threads 2 --no-progress)
phase() {  # phase NAME ARGS...: one training phase, its wall time appended to times.txt
    local name=$1 t0=$SECONDS
    shift
    if grep -qs "^$name " "$work/times.txt"; then
        echo "$name: listed in $work/times.txt, skipped"
        return
    fi
    rm -rf "${work:?}/$name"
    "$nr" train "$prep" -o "$work/$name" "${common[@]}" "$@" "${extra[@]}"
    echo "$name $((SECONDS - t0)) s" >> "$work/times.txt"
}
extra=("$@")
phase phase1 \
    --model emb_size=192 --model rnn_hidden=384 --model rnn_layers=1 --model mlp_layers=1 \
    --model time_sharp_init=0.03 --lr 1e-3 --warmup-steps 200 --max-steps 3600 \
    --time-limit 2100 --checkpoint-every 400 --seed 0
phase phase2 --init-from "$work/phase1" \
    --lr 5e-4 --warmup-steps 100 --max-steps 3300 --time-limit 1800 --checkpoint-every 500 \
    --seed 1
phase phase3 --init-from "$work/phase2" \
    --model time_pulse=8 --model time_pulse_grid=1 --model time_pulse_gain=10 \
    --model time_res=0.002 --lr 3e-4 --warmup-steps 100 --max-steps 4000 \
    --time-limit 2700 --checkpoint-every 500 --num-workers 1 --seed 3
phase phase4 --init-from "$work/phase3" \
    --model pitch_copy=4 --lr 3e-4 --warmup-steps 100 --max-steps 4500 \
    --time-limit 3000 --checkpoint-every 500 --num-workers 1 --seed 4
phase phase5 --init-from "$work/phase4" \
    --lr 1.5e-4 --warmup-steps 100 --max-steps 1500 --time-limit 1100 --checkpoint-every 500 \
    --num-workers 1 --seed 5
last=$(ls -d "$work"/phase5/checkpoints/step-* | sort | tail -n 1)
cp "$last/model.safetensors" "$work/model.safetensors"
echo "the model: $work/model.safetensors (from $last); wall times in $work/times.txt"
