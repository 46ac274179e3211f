#!/usr/bin/env bash
# From zero to the whole test suite (slow and browser tests included): install, then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
export CAM_EXPLORER_REQUIRE_BROWSER=1
exec .venv/bin/python -m pytest "$@"
