#!/usr/bin/env bash
# Train a large Notochord on a CUDA device for a fixed number of minutes.
#
# Usage: bash scripts/train-gpu.sh CORPUS_DIR OUT_DIR MINUTES [extra `notochord-rt train` flags]
#   CORPUS_DIR  MIDI files (e.g. from `notochord-rt corpus build CORPUS_DIR`), or a folder
#               already prepared by `notochord-rt prep` (it has train/ and valid/)
#   OUT_DIR     where the result goes: model.safetensors (the last checkpoint's weights),
#               valid.json, train_config.json, eval.json (NLL on the test split, else valid) and train.log.
#               Optimizer state and older checkpoints stay in $WORK (default a temporary
#               folder), so OUT_DIR holds only what is worth copying back from a lent GPU.
#   MINUTES     wall-clock training budget (prep and evaluation come on top)
#
# Defaults: the reference-size network (emb 512, GRU 1024 x 2, 17.7 M parameters), bf16
# autocast, batch 128 x 512 events, AdamW 5e-4 with warm-up and a cosine decay sized from
# the budget, 8 data-loader workers. Any flag after MINUTES overrides these, e.g.
#   --model rnn_hidden=768 --batch-size 256 --device cpu --precision fp32 --max-steps 3
# (the test suite runs it that way on a tiny model). The bundled model's additions can be
# asked for the same way: --model time_pulse=8 --model time_pulse_grid=1
# --model time_pulse_gain=10 --model time_res=0.002 (pulse components on a tracked grid)
# and --model pitch_copy=4 (motif copying). Motif candidates (about 20 ms per 16 x 256
# events) and grid lines (0.1-0.25 s per 16 x 256 events) are computed in Python by the
# data-loader workers with the batches.
#
# With the project's device tool: carry the prepared corpus and run
#   bash scripts/train-gpu.sh PREP "$OUT" 8
# so the files land under $OUT, which the tool copies back.
set -euo pipefail
corpus=${1:?corpus folder}; out=${2:?output folder}; minutes=${3:?minutes of training}
shift 3
cd "$(dirname "$0")/.."
nr=${NOTOCHORD_RT:-}
if [ -z "$nr" ]; then
    if [ -x .venv/bin/notochord-rt ]; then nr=.venv/bin/notochord-rt; else nr=notochord-rt; fi
fi
work=${WORK:-$(mktemp -d -t notochord-gpu-XXXXXX)}
mkdir -p "$out" "$work"
log="$out/train.log"
seconds=$(python3 -c "import sys; m=float(sys.argv[1]); assert m > 0, 'MINUTES must be > 0'; print(int(m * 60) or 1)" "$minutes")

if [ -d "$corpus/train" ] && [ -d "$corpus/valid" ]; then
    prep="$corpus"
else
    prep="$work/prep"
    echo "prep: $corpus -> $prep" | tee -a "$log"
    "$nr" prep "$corpus" --out "$prep" 2>&1 | tail -n 4 | tee -a "$log"
fi

# Steps the budget allows are unknown in advance; the cosine schedule is sized for a
# generous guess (2 steps/s) and the time limit stops the run. Flags given later win.
max_steps=$(( seconds * 2 > 1000 ? seconds * 2 : 1000 ))
echo "train: $seconds s on $prep (work folder $work)" | tee -a "$log"
"$nr" train "$prep" -o "$work/run" \
    --batch-size 128 --batch-len 512 --lr 5e-4 --schedule cosine --warmup-steps 300 \
    --min-lr-ratio 0.1 --max-steps "$max_steps" --time-limit "$seconds" \
    --valid-batches 16 --checkpoint-every 500 --keep-checkpoints 1 --num-workers 8 \
    --precision auto --device auto --seed 0 --no-progress "$@" 2>&1 | tee -a "$log"

last=$(ls -d "$work"/run/checkpoints/step-* | sort | tail -n 1)
cp "$last/model.safetensors" "$out/model.safetensors"
for f in valid.json train_config.json; do [ -f "$last/$f" ] && cp "$last/$f" "$out/$f"; done
echo "checkpoint: $last -> $out/model.safetensors" | tee -a "$log"
py=$(dirname "$(command -v "$nr")")/python
[ -x "$py" ] || py=python3
dev=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
if "$nr" eval "$out/model.safetensors" "$prep" --orders canonical --device "$dev" \
        --no-progress --json > "$out/eval.json" 2>>"$log"; then
    echo "NLL (test split, or valid where test is empty): $out/eval.json" | tee -a "$log"
else
    echo "evaluation failed (see $log)" | tee -a "$log"
fi
