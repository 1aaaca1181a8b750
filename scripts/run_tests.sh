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
# Two workers' trainings run side by side, each with torch's 2 threads on 2 cores. OpenMP threads that wait by
# spinning then burn the cores the other process needs: a small conv-net training step ran 3x slower with two such
# processes at once than with OMP_WAIT_POLICY=PASSIVE (docs/ARCHITECTURE.md, "Test suite"). Your own value wins.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd tests && exec "../$VENV/bin/python" -m pytest -q -n "$WORKERS" --dist loadfile "$@" .
