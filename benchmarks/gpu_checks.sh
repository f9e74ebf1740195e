#!/usr/bin/env bash
# What a session with one lent GPU checks, in one go (under 10 minutes on an H200). Parts:
#
#   transformer  the CUDA path of every command on the `tiny` Transformer: train (bfloat16) ->
#                sample -> score -> eval; the run stopped with Ctrl-C half-way and resumed,
#                against the uninterrupted run and against a second uninterrupted run (how much
#                two identical runs differ on this GPU); logits on the GPU against the CPU's
#   lstm         the same for the default LSTM (cuDNN keeps its weights in one shared buffer)
#   serve_cuda   `lmforge serve` on the GPU under load (benchmarks/serve_load.py --device cuda)
#   serve_cpu    the same on this machine's CPU cores
#   shakespeare  nanoGPT's shakespeare-char run (benchmarks/gpu_shakespeare.sh; with two GPUs
#                or more it also checks torchrun on NCCL)
#
#     bash benchmarks/gpu_checks.sh [LOG_DIR]                    # every part
#     PARTS="lstm serve_cuda" bash benchmarks/gpu_checks.sh      # some of them
#
# Runs from the repository with whatever python3 has torch (PYTHON=...); lmforge is taken from
# src/. Each part's output goes to LOG_DIR/<part>.txt (default: runs/gpu-checks) and each part
# has a time limit, so one that hangs does not cost the others. Exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-runs/gpu-checks}
PYTHON=${PYTHON:-python3}
PARTS=${PARTS:-transformer lstm serve_cuda serve_cpu shakespeare}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu STEPS=20 PARTS=lstm tries a part on a machine without a GPU
STEPS=${STEPS:-200}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LMFORGE="$PYTHON -m lmforge"
WORK=$(mktemp -d)
mkdir -p "$LOGS"
failed=0

part() {  # part NAME SECONDS COMMAND...: run, log, time, and record a failure
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" >"$LOGS/$name.txt" 2>&1
    local status=$?
    tail -n 25 "$LOGS/$name.txt"
    echo "== $name: exit $status after $((SECONDS - start)) s"
    [ "$status" -eq 0 ] || failed=1
}

commands() {  # commands NAME MODEL_FLAGS...
    set -e
    local run=$WORK/$1
    shift
    nvidia-smi -L || true
    $PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    $PYTHON - "$run" "$DEVICE" "$STEPS" "$@" <<'CHECK'
import json, signal, subprocess, sys, time
run, device, steps, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
flags = ["--corpus", "tinyshakespeare", *model, "--device", device, "--dtype", "bfloat16",
         "--max-steps", str(steps), "--eval-interval", str(steps // 2), "--eval-iters", "20",
         "--quiet"]
train = [sys.executable, "-m", "lmforge", "train"]
for out in (run, run + "-again"):
    subprocess.run([*train, *flags, "--out", out], check=True)
print(open(run + "/metrics.jsonl").readlines()[-1], end="")
# the same run stopped with Ctrl-C half-way, then resumed
trainer = subprocess.Popen([*train, *flags, "--out", run + "-resumed"])
def last_step():
    try:
        return json.loads(open(run + "-resumed/metrics.jsonl").readlines()[-1])["step"]
    except (OSError, IndexError, ValueError):
        return -1
while last_step() < steps // 2 and trainer.poll() is None:
    time.sleep(0.05)
trainer.send_signal(signal.SIGINT)
print(f"Ctrl-C after step {last_step()}: exit {trainer.wait()}")
subprocess.run([*train, "--resume", run + "-resumed", "--quiet"], check=True)
def records(path):
    return [json.loads(line) for line in open(path + "/metrics.jsonl")]
def largest_difference(a, b):
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True)
               for k in ("train_loss", "val_loss") if x.get(k) is not None)
first = records(run)
again = largest_difference(first, records(run + "-again"))
resumed = largest_difference(first, records(run + "-resumed"))
print(f"{device}, {len(first)} records: largest loss difference of a second identical run "
      f"{again:.3e}, of the run stopped and resumed {resumed:.3e}")
sys.exit(0 if resumed <= 2e-2 else 1)
CHECK
    $LMFORGE sample "$run" --prompt "ROMEO:" --length 120 --seed 1 --device "$DEVICE"
    $LMFORGE score "$run" --prompt "ROMEO: " "I love thee" "xqzj vvk" --device "$DEVICE"
    $LMFORGE eval "$run" --device "$DEVICE"
    $PYTHON - "$run" "$DEVICE" <<'CHECK'
import sys, torch
from lmforge.runs import load_run
device = sys.argv[2]
gpu, cpu = load_run(sys.argv[1], device=device), load_run(sys.argv[1], device="cpu")
ids = torch.randint(0, gpu.tokenizer.vocab_size, (4, 128))
with torch.no_grad():
    on_gpu = gpu.model(ids.to(device))[0].float().cpu()
    on_cpu = cpu.model(ids)[0].float()
    error = ((on_gpu - on_cpu).norm() / on_cpu.norm()).item()
print(f"logits float32 {device} vs cpu: relative error {error:.2e}")
sys.exit(0 if error < 1e-3 else 1)
CHECK
}

export -f commands
export LMFORGE PYTHON WORK DEVICE STEPS
for name in $PARTS; do
    case $name in
        transformer) part transformer 120 bash -c 'commands "$@"' _ tiny --model transformer --preset tiny ;;
        lstm) part lstm 120 bash -c 'commands "$@"' _ lstm --model lstm ;;
        serve_cuda) part serve_cuda 140 "$PYTHON" benchmarks/serve_load.py --device cuda --repeats 1 ;;
        serve_cpu) part serve_cpu 200 "$PYTHON" benchmarks/serve_load.py --device cpu --repeats 1 ;;
        shakespeare)
            part gpu_shakespeare 280 bash benchmarks/gpu_shakespeare.sh "$WORK/shakespeare"
            cp "$WORK/shakespeare/metrics.jsonl" "$LOGS/gpu_shakespeare_metrics.jsonl" 2>/dev/null
            ;;
        *) echo "unknown part $name"; failed=1 ;;
    esac
done
rm -rf "$WORK"
exit "$failed"
