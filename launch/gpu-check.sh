#!/usr/bin/env bash
# The CUDA paths on one GPU in a few minutes (launch/gpu_check.py says what each part checks):
#   launch/gpu-check.sh [--steps 3] [--warm-start-steps 300] [--out DIR]
# It uses the project's .venv when there is one, else $PYTHON or python3 as it is (a GPU machine
# may have no network to install from); parts whose packages are missing are skipped and named.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
fi
exec "$PY" -m launch.gpu_check "$@"
