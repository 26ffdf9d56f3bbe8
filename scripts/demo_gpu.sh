#!/usr/bin/env bash
# The demo on one GPU: convert the embedded demo dataset (once), train experiment=demo_gpu (bf16, FlexAttention,
# torch.compile), and score its checkpoints with the same robofm-eval command as `make demo`, so that the numbers
# sit beside the CPU demo's in benchmarks/RESULTS.md. Usage, from the repository root after `make test` or `make demo`
# has built .venv:
#     bash scripts/demo_gpu.sh [OUT] [robofm-train overrides...]
# OUT defaults to outputs/demo_gpu; everything lands there (run folder, eval-step-N.json, the logs).
set -euo pipefail
OUT=${1:-outputs/demo_gpu}
shift || true
BIN=${BIN:-.venv/bin}
STORE=outputs/demo/store
mkdir -p "$OUT"
"$BIN/python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use make demo")'
test -f "$STORE/manifest.json" || "$BIN/robofm-convert" lerobot datasets/metaworld_mt10 --out "$STORE" --overwrite --workers 4
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$BIN/robofm-train" experiment=demo_gpu data.path="$STORE" hydra.run.dir="$OUT/run" resume=auto "$@" 2>&1 | tee "$OUT/train.log"
# every kept checkpoint, oldest first: the steps-against-metric curve of one schedule
for ckpt in "$OUT"/run/checkpoints/step-*; do
  step=$(basename "$ckpt")
  "$BIN/robofm-eval" checkpoint="$ckpt" data.path="$STORE" device=cuda out="$OUT/eval-$step.json" \
    horizons=1,4,16 batches=8 batch_size=4 sampler_steps=10 verdict_sampler_steps=1 2>&1 | tee "$OUT/eval-$step.log"
done
echo "demo_gpu: run $OUT/run, held-out metrics $OUT/eval-step-*.json"
