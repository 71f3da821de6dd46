#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one run, at most 8 minutes on one H200:
# the train step against timm (eager and torch.compile), its XLA roofline, the
# augmentations in the step, BatchNorm's fused form, and the exact search
# against its matmul bound and PyTorch. One JSON line per row on stdout and in
# OUT/gpu_suite.jsonl; each row's log beside it.
#
#   scripts/bench/gpu_suite.sh OUT          # on a GPU machine (jax[cuda], torch + timm)
#   scripts/bench/gpu_suite.sh OUT --smoke  # any machine: tiny sizes, checks the wiring
#
# Needs no TensorFlow. PYTHON picks the interpreter (default: python3), which must
# have jax, flax, optax, ml_collections and, for the peer rows, torch and timm.
set -euo pipefail
out=${1:?usage: scripts/bench/gpu_suite.sh OUT [--smoke]}
shift
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" scripts/bench/gpu_suite.py --out "$out" "$@"
