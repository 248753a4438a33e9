#!/usr/bin/env bash
# advrec under the GPU machine's Python stack, checked on a CPU machine: CPython 3.12 with torch 2.11.0 and
# torchvision 0.26.0 (scripts/bootstrap pins 2.14.1 / 0.29.1 on Python 3.11 for development and CI).
#   1. $VENV (default: ../venv-torch211, beside the repository): a stand-in for the GPU image, with that
#      torch and those of the image's packages that advrec or its wheelhouse touch, nothing else (no
#      pydantic, fastapi, celery, torchattacks, ...: as there);
#   2. bash benchmarks/gpu.sh --check with it: the wheelhouse (bash scripts/build_wheelhouse, built first
#      if missing) installs and covers what the image lacks, and the GPU run's scripts run tiny on the CPU;
#   3. $VENV-tests: $VENV's packages (through a .pth file, not copied) + the wheelhouse + the test extras,
#      and the CPU test suite in it with the repository on PYTHONPATH (no editable install).
# Usage: bash benchmarks/torch_compat.sh [pytest arguments]     (default: the whole suite, -q)
# PYTHON=... a CPython 3.12 (default: python3.12 if it runs, else pyenv's 3.12, else `uv python find 3.12`).
# Needs PyPI the first time: torch 2.11.0 from PyPI is its CUDA build, ~3 GB to download, ~6 GB on disk.
# Time on the 2-core development machine: first run ~6 min to install + --check ~1 min + the suite ~10 min;
# later runs ~1 + 10 min (docs/performance.md, "torch 2.11").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$(dirname "$ROOT")/venv-torch211}
TORCH=(torch==2.11.0 torchvision==0.26.0)
# the image's packages (scripts/gpu_image_packages.txt) that advrec, its tests or its wheelhouse import
IMAGE=(numpy scipy pandas pyarrow pillow matplotlib jinja2 httpx anyio h11 requests six python-dateutil click
       annotated-doc typing-extensions packaging setuptools pyyaml tqdm torchmetrics pytest pytest-timeout
       hypothesis scikit-image)

find_python() {
  local c
  for c in "${PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
           "$(uv python find 3.12 2>/dev/null || true)"; do
    [ -n "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo "$c"; return; }
  done
  echo "no CPython 3.12 found: install one (uv python install 3.12, or apt-get install python3.12-venv) and set PYTHON" >&2
  return 1
}

venv_with() {  # dir, stamp text, install command...: (re)install when the stamp differs
  local dir=$1 stamp=$2; shift 2
  if [ "$(cat "$dir/.advrec-stamp" 2>/dev/null)" != "$stamp" ]; then
    [ -x "$dir/bin/python" ] || "$PY312" -m venv "$dir"
    "$@"
    echo "$stamp" > "$dir/.advrec-stamp"
  fi
}

PY312=$(find_python)
t0=$SECONDS
echo "== the GPU image's stand-in: $VENV"
venv_with "$VENV" "${TORCH[*]} ${IMAGE[*]}" \
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${TORCH[@]}" "${IMAGE[@]}"
"$VENV/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'

echo "== benchmarks/gpu.sh --check"
[ -d wheelhouse ] || bash scripts/build_wheelhouse
PY="$VENV/bin/python" bash benchmarks/gpu.sh --check

echo "== the test suite under that torch: $VENV-tests"
SITE_OF() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
wheels_sum=$(cat wheelhouse/*.whl | cksum)
test_extras=$("$VENV/bin/python" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))')
install_tests() {
  echo "$(SITE_OF "$VENV/bin/python")" > "$(SITE_OF "$VENV-tests/bin/python")/_advrec_gpu_image.pth"
  "$VENV-tests/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps wheelhouse/*.whl
  # pip sees the stand-in's packages through the .pth file and adds only what is missing; torch stays 2.11
  # shellcheck disable=SC2086
  "$VENV-tests/bin/python" -m pip install -q --disable-pip-version-check \
    -c <(printf '%s\n' "${TORCH[@]}") $test_extras
}
venv_with "$VENV-tests" "$wheels_sum $test_extras" install_tests
echo "environments ready in $((SECONDS - t0)) s"
[ "$#" -gt 0 ] || set -- -q
PYTHONPATH="$ROOT" "$VENV-tests/bin/python" -m pytest -p no:cacheprovider "$@"
