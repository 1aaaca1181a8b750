#!/usr/bin/env bash
# Set-up (scripts/setup.sh) followed by the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${CPS4_VENV:-.venv}"
# run from tests/ so that the installed package, not the source tree, is imported
cd tests && exec "../$VENV/bin/python" -m pytest -q "$@" .
