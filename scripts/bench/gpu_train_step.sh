#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md "Backbones: full train step vs timm": ours in bfloat16
# against timm with bfloat16 autocast and channels_last, B0 and B5, in one go.
# Usage: scripts/bench/gpu_train_step.sh [OUTPUT.jsonl]   (default: stdout only)
# Needs a Python with jax[cuda], flax, optax, ml_collections, and torch+timm for the
# peer (PEER_PYTHON, default: the python3 on PATH).
set -euo pipefail
out=${1:-/dev/null}
peer=${PEER_PYTHON:-$(command -v python3)}
cd "$(dirname "$0")/../.."
# model image_size batch_size
for run in "efficientnet_b0 128 32" "efficientnet_b0 224 128" "efficientnet_b5 456 32"; do
  read -r model size batch <<<"$run"
  echo "+ train_step.py --model $model --image_size $size --batch_size $batch" >&2
  python3 scripts/bench/train_step.py --model "$model" --image_size "$size" \
    --batch_size "$batch" --dtype bfloat16 --steps 20 --warmup 5 \
    --peer_python "$peer" --peer_amp --peer_channels_last | tee -a "$out"
done
