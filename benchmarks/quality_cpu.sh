#!/usr/bin/env bash
# Quality bar of issue 4: Tiny Shakespeare, character level, the default Transformer, val loss
# ≤ 1.55 within --time-budget 600 on a 2-core CPU. Run it on a quiet machine (it takes the
# whole CPU for 10 minutes):
#
#     bash benchmarks/quality_cpu.sh                 # the bar: ~10 min
#     ANCHOR=1 bash benchmarks/quality_cpu.sh        # + nanoGPT's CPU config as a peer (~2.5 min)
#
# Prints the trainer's last estimate (20 fixed validation batches) and the exact loss of
# `lmforge eval` over every prediction of the validation split, for the final and best weights.
set -euo pipefail
cd "$(dirname "$0")/.."
LMFORGE=${LMFORGE:-.venv/bin/lmforge}
OUT=${OUT:-runs/bench-transformer-cpu}
THREADS=${THREADS:-$(nproc)}

echo "== default Transformer (preset tiny on a CPU), --time-budget 600, $THREADS threads"
OMP_NUM_THREADS=$THREADS $LMFORGE train --corpus tinyshakespeare --model transformer \
    --device cpu --time-budget 600 --out "$OUT" --overwrite
for checkpoint in final best; do
    echo "$checkpoint: $($LMFORGE eval "$OUT" --checkpoint "$checkpoint" --device cpu --json)"
done

if [[ "${ANCHOR:-0}" == 1 ]]; then
    # nanoGPT's README CPU run: `python train.py config/train_shakespeare_char.py --device=cpu
    # --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
    # --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`
    # (nanoGPT: val 1.886 after 2000 iterations, ~141 s on one core of this machine)
    echo "== anchor: nanoGPT's CPU configuration, 2000 steps, float32, learned positions"
    OMP_NUM_THREADS=$THREADS $LMFORGE train --corpus tinyshakespeare --model transformer \
        --device cpu --dtype float32 --position learned --n-layer 4 --n-head 4 --n-embd 128 \
        --block-size 64 --batch-size 12 --max-steps 2000 --learning-rate 1e-3 --min-lr 1e-4 \
        --warmup-steps 100 --dropout 0.0 --eval-interval 250 --eval-iters 20 \
        --out "$OUT-nanogpt-anchor" --overwrite
fi
