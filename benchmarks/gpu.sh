#!/usr/bin/env bash
# The GPU path, proven on a lent device in one run (the stages' limits add up to 7.5 minutes after a setup
# of about 30 s; docs/performance.md, section 9, has the device tool's exact call):
#   0. setup: the wheelhouse installed into a throwaway folder, then benchmarks/gpu_env.py (requirements met,
#      torch version, every module imports) and nvidia-smi;
#   1. the CUDA tests (tests/test_cuda.py: extraction, attacks and recommenders on the GPU agree with the CPU);
#   2. ResNet50 extraction img/s against the same device's bare forward peak (benchmarks/extraction_gpu.py);
#   3. PGD-10 img/s, ours against torchattacks (benchmarks/attack_throughput.py --device cuda);
#   4. a VBPR epoch and the projected study grid at Amazon Men size (benchmarks/study_scale.py --device cuda).
# Results: summary.txt and one log per stage (6 files, each cut at 16 MiB) in $OUT, else OUT_DIR, else gpu-results/.
#
# Usage (any directory):
#   bash benchmarks/gpu.sh [OUT_DIR]   the proof, on a machine with a CUDA device
#   bash benchmarks/gpu.sh --check     no GPU needed: install the wheelhouse, import everything the run
#                                      imports, run each benchmark tiny on the CPU; exits 0 when all is there
# PY=... the python (default: the repository's .venv/bin/python if there is one, else python3: the GPU
# machine's). Without the .venv, the packages that python lacks come from wheelhouse/ (bash
# scripts/build_wheelhouse), installed with --no-index into a throwaway folder (nothing is fetched), and the
# repository goes on PYTHONPATH (no editable install).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHECK=0
if [ "${1:-}" = --check ]; then CHECK=1; shift; fi
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELHOUSE=${WHEELHOUSE:-$ROOT/wheelhouse}
if [ "$CHECK" = 1 ]; then
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/advrec-gpu-check.XXXXXX")
else
  OUT=${1:-${OUT:-gpu-results}}
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SITE=$(mktemp -d "${TMPDIR:-/tmp}/advrec-gpu-site.XXXXXX")
trap 'rm -rf "$SITE"; [ "$CHECK" = 1 ] && rm -rf "$OUT"' EXIT
FAILED=()

log_cap() { truncate -s '<16M' "$1" 2>/dev/null || true; }  # what comes back from $OUT: 16 MiB a file

stage() {  # name, time limit (s; none for a function), lines of its log for the summary, command...
  local name=$1 limit=$2 lines=$3; shift 3
  local t0=$SECONDS
  echo "== $name" | tee -a "$OUT/summary.txt"
  if declare -F "$1" > /dev/null; then  # a function of this script (setup): timeout runs programs only
    "$@" >> "$OUT/$name.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.log" 2>&1
  fi
  local rc=$?
  log_cap "$OUT/$name.log"
  tail -n "$lines" "$OUT/$name.log" | tee -a "$OUT/summary.txt"
  local note=""
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note=" (stopped at its ${limit} s limit)"
  echo "rc=$rc in $((SECONDS - t0)) s$note" | tee -a "$OUT/summary.txt"
  if [ "$rc" != 0 ]; then
    FAILED+=("$name")
    # --check's logs go with its temporary folder: show the whole log of what failed
    if [ "$CHECK" = 1 ] && [ "$(wc -l < "$OUT/$name.log")" -gt "$lines" ]; then
      { echo "---- $name.log"; cat "$OUT/$name.log"; echo "----"; } | tee -a "$OUT/summary.txt"
    fi
  fi
  return "$rc"
}

uses_repo_venv() {  # the .venv has every package (scripts/bootstrap); its python need not be 3.12
  [ -d .venv ] && [ "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null)" = "$(realpath .venv)" ]
}

setup() {  # install the wheelhouse (unless the python is the .venv's), then check the environment
  local site_arg=()
  if uses_repo_venv; then
    echo "$PY is the repository's .venv: no wheelhouse needed"
  elif compgen -G "$WHEELHOUSE/*.whl" > /dev/null; then
    echo "installing $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels from $WHEELHOUSE into $SITE (no index)"
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-cache-dir \
      --no-index --find-links "$WHEELHOUSE" --no-deps --target "$SITE" "$WHEELHOUSE"/*.whl || return 3
    site_arg=(--site "$SITE")
  else
    echo "no wheels in $WHEELHOUSE: build them with 'bash scripts/build_wheelhouse' and carry the folder" >&2
    return 3
  fi
  "$PY" benchmarks/gpu_env.py "${site_arg[@]}" || return $?
  if [ "$CHECK" = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
      || echo "(no nvidia-smi)"
  fi
}

export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "advrec GPU proof$([ "$CHECK" = 1 ] && echo ' --check'), $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), python: $PY"
} | tee "$OUT/summary.txt"
stage setup 0 40 setup || { echo "setup failed: nothing else can run (see setup.log)" | tee -a "$OUT/summary.txt"; exit 3; }

if [ "$CHECK" = 1 ]; then
  # the same scripts the GPU run starts, each tiny on the CPU: their imports and code paths under this torch
  stage cuda_tests 120 3 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
  stage extraction 120 4 "$PY" benchmarks/extraction_gpu.py --device cpu --n 4 --batch 2 --size 64
  stage attacks 120 6 "$PY" benchmarks/attack_throughput.py --device cpu --methods fgsm,pgd --eps 4 \
    --backbone small_cnn --size 32 --batch 2 --repeat 1
  stage study_scale 60 2 "$PY" benchmarks/study_scale.py --help
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: nothing to prove here" | tee -a "$OUT/summary.txt" >&2; exit 2; }
  stage cuda_tests 120 15 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
  stage extraction 60 5 "$PY" benchmarks/extraction_gpu.py --device cuda
  stage attacks 120 12 "$PY" benchmarks/attack_throughput.py --device cuda --methods fgsm,pgd --eps 4 \
    --backbone resnet50 --size 224 --batch 64 --classes 1000
  stage study_scale 150 20 "$PY" benchmarks/study_scale.py --device cuda --epochs 3
fi

if [ "${#FAILED[@]}" = 0 ]; then
  echo "all stages passed" | tee -a "$OUT/summary.txt"
else
  echo "failed: ${FAILED[*]}" | tee -a "$OUT/summary.txt"
  exit 1
fi
