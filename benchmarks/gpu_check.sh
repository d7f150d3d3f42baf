#!/usr/bin/env bash
# One table in a few minutes on a GPU machine: ResNet101 extraction at 1024 px (images/s, fraction of the bf16 FLOP
# bound), AML re-ranking of a 1000-image short-list and the local-similarity scorer. On a CPU-only machine it says
# "no GPU" and runs the same checks at a reduced size.  Usage: bash benchmarks/gpu_check.sh [--json OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" benchmarks/gpu_check.py "$@"
