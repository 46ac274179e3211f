#!/usr/bin/env bash
# From zero to the running app: install into ./.venv, then serve on http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Idle OpenMP threads sleep instead of spinning against the browser (see app.py).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# ui/serve.py: `streamlit run app.py` with the first page's imports and default backbone
# loading from process start (issue 9 item 17); options go to streamlit run.
exec .venv/bin/python -m ui.serve "$@"
