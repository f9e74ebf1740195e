#!/usr/bin/env bash
# nanoGPT's shakespeare-char run on one GPU: 6 layers, 6 heads, 384 wide, block 256, batch 64,
# dropout 0.2, 5000 iterations, bfloat16 autocast and torch.compile (the `small` preset).
# nanoGPT's anchor: val loss 1.4697 in about 3 minutes on an A100.
#
#     bash benchmarks/gpu_shakespeare.sh [RUN_DIR]
#
# The GPU machine may be offline: point LMFORGE_DATA_DIR at a folder holding
# tinyshakespeare/input.txt (and install a CUDA build of torch there first).
# Prints the wall time of training, the trainer's last validation estimate (200 batches) and
# the exact validation loss of `lmforge eval`.
#
# With two or more GPUs it then checks torchrun on NCCL: a 2-process run of the same model for
# 300 steps, evaluating (an all-reduce) every 100, must exit 0 on both ranks; then fine-tunes
# that run for 50 steps (bfloat16) with --strategy ddp and --strategy fsdp, which must log the
# same losses (within 1e-2: bfloat16 and NCCL reduce in different orders). With fewer GPUs it
# says that it skips this part.
set -euo pipefail
cd "$(dirname "$0")/.."
LMFORGE=${LMFORGE:-.venv/bin/lmforge}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu-shakespeare}

start=$(date +%s.%N)
$LMFORGE train --corpus tinyshakespeare --model transformer --preset small --position learned \
    --device cuda --dtype bfloat16 --compile --max-steps 5000 --out "$OUT" --overwrite --quiet
end=$(date +%s.%N)
echo "wall time: $(python3 -c "print(f'{$end - $start:.1f}')") s (whole command, compile included)"
tail -n 1 "$OUT/metrics.jsonl"
for checkpoint in final best; do
    echo "$checkpoint: $($LMFORGE eval "$OUT" --checkpoint "$checkpoint" --json)"
done

gpus=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 2 ]; then
    echo "torchrun check skipped: $gpus GPU(s) visible, 2 needed"
    exit 0
fi
echo "torchrun check: 2 processes on NCCL ($gpus GPUs visible)"
start=$(date +%s.%N)
status=0
$PYTHON -m torch.distributed.run --standalone --nproc_per_node 2 -m lmforge train \
    --corpus tinyshakespeare --model transformer --preset small --position learned \
    --device cuda --dtype bfloat16 --max-steps 300 --eval-interval 100 \
    --out "$OUT-2gpu" --overwrite --quiet || status=$?
end=$(date +%s.%N)
echo "torchrun exit status: $status; wall time $(python3 -c "print(f'{$end - $start:.1f}')") s"
if [ "$status" -ne 0 ]; then
    echo "torchrun check FAILED"
    exit "$status"
fi
tail -n 1 "$OUT-2gpu/metrics.jsonl"
echo "torchrun check passed"

echo "fsdp check: fine-tuning $OUT-2gpu with --strategy ddp and fsdp on 2 processes"
for strategy in ddp fsdp; do
    $PYTHON -m torch.distributed.run --standalone --nproc_per_node 2 -m lmforge train \
        --init-from "$OUT-2gpu" --corpus tinyshakespeare --device cuda --dtype bfloat16 \
        --strategy "$strategy" --dropout 0 --learning-rate 1e-4 --lr-schedule constant \
        --warmup-steps 0 --max-steps 50 --eval-interval 25 --log-interval 5 \
        --out "$OUT-$strategy" --overwrite --quiet
done
$PYTHON - "$OUT-ddp" "$OUT-fsdp" <<'CHECK'
import json, sys
ddp, fsdp = ([json.loads(line) for line in open(f"{run}/metrics.jsonl")] for run in sys.argv[1:])
worst = max(abs(a[key] - b[key]) for a, b in zip(ddp, fsdp, strict=True)
            for key in ("train_loss", "val_loss") if a.get(key) is not None)
print(f"fsdp vs ddp: largest loss difference {worst:.2e} over {len(ddp)} records")
sys.exit(0 if worst < 1e-2 else 1)
CHECK
echo "fsdp check passed"
