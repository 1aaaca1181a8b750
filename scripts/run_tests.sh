#!/usr/bin/env bash
# Set-up (scripts/setup.sh) followed by the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${CPS4_VENV:-.venv}"
# run from tests/ so that the installed package, not the source tree, is imported. Two pytest workers (pytest-xdist;
# CPS4_TEST_WORKERS=0 runs in one process), each test module whole in one worker: the end-to-end modules' tests
# build on each other's models, and most of a short training is process start-up that a second worker overlaps
WORKERS="${CPS4_TEST_WORKERS:-2}"
cd tests && exec "../$VENV/bin/python" -m pytest -q -n "$WORKERS" --dist loadfile "$@" .
