#!/usr/bin/env bash
# The GPU path, proven on a lent device in one run (well under ten minutes on an H100/H200):
#   1. the CUDA tests (tests/test_cuda.py: extraction, attacks and recommenders on the GPU agree with the CPU);
#   2. ResNet50 extraction img/s against the same device's bare forward peak (benchmarks/extraction_gpu.py);
#   3. PGD-10 img/s, ours against torchattacks (benchmarks/attack_throughput.py --device cuda);
#   4. a VBPR epoch and the projected study grid at Amazon Men size (benchmarks/study_scale.py --device cuda).
# Usage (from the repository root, with .venv installed): bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-results}}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
$PY -c "import torch, sys; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU'); sys.exit(0 if torch.cuda.is_available() else 1)" \
  | tee "$OUT/device.txt" || { echo "no CUDA device: nothing to prove here" >&2; exit 2; }
run() {  # name, timeout (s), command...
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
  echo "rc=$rc" | tee -a "$OUT/summary.txt"
}
run cuda_tests 150 .venv/bin/pytest -q -p no:cacheprovider tests/test_cuda.py
run extraction 90 $PY benchmarks/extraction_gpu.py --device cuda
run attacks 120 $PY benchmarks/attack_throughput.py --device cuda --methods fgsm,pgd --eps 4 --backbone resnet50 --size 224 --batch 64 --classes 1000
run study_scale 180 $PY benchmarks/study_scale.py --device cuda --epochs 3
