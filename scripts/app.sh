#!/usr/bin/env bash
# From zero to the running app: install into ./.venv, then serve on http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Idle OpenMP threads sleep instead of spinning against the browser (see app.py).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m streamlit run app.py "$@"
