#!/usr/bin/env bash
# Creates the virtual environment (default .venv, or $CPS4_VENV) and installs nnunet-cps4 into it.
#
# torch and torchvision must be a matching pair (PyPI's torchvision beside another torch build fails at import):
# the default pair below installs on a fresh machine and runs on CPU and CUDA. To keep a torch you installed
# yourself (e.g. another CUDA build), run with CPS4_TORCH="" and make sure torchvision matches it.
# pip only: uv/poetry would download another multi-GB torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CPS4_VENV:-.venv}"
TORCH="${CPS4_TORCH-torch==2.14.1 torchvision==0.29.1}"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "$TORCH" ]; then
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $TORCH
fi
# a normal (non-editable) install: what users get from pip; tests run against it
"$VENV/bin/python" -m pip install -q ".[test]"
echo "nnunet-cps4 installed in $VENV"
