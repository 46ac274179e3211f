#!/usr/bin/env bash
# Installs everything into ./.venv (idempotent). `scripts/setup.sh dev` adds the test tools,
# the optional Ray extra (requirements-ray.txt) and Debian's chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements.txt
if [ "${1:-}" = "dev" ]; then
  python -m pip install --quiet -r requirements-dev.txt
  python -m pip install --quiet -r requirements-ray.txt
  python -m pip install --quiet --no-deps grad-cam==1.5.7
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
