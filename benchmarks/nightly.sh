#!/usr/bin/env bash
# Nightly: the slow tests (kept out of the default run) and every benchmark script, on the CPU
# and on CUDA when a GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
.venv/bin/pytest -q -m slow
DEVICES=cpu
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then DEVICES="cpu cuda"; fi
for dev in $DEVICES; do
  $PY benchmarks/attack_throughput.py --device "$dev"
done
$PY benchmarks/recommender_speed.py
$PY benchmarks/demo_stages.py --device cpu
