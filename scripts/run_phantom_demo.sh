#!/usr/bin/env bash
# Set-up (scripts/setup.sh) followed by the main job on the built-in default, the lumbar spine phantom:
# make phantom -> nnUNetv2_plan_and_preprocess -> preprocess unlabeled images -> train supervised nnU-Net and
# CPS4 (stage (i) then stage (ii)) on the same 8 labeled cases -> stock nnUNetv2_predict -> Dice against labelsTs.
# Everything lives in $CPS4_DEMO_DIR (default ./cps4_work/demo), nnU-Net folders included; your own nnUNet_*
# folders are not touched. Extra arguments go to nnUNetv2_cps4_benchmark (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${CPS4_VENV:-.venv}"
exec "$VENV/bin/nnUNetv2_cps4_benchmark" --preset demo --out "${CPS4_DEMO_DIR:-cps4_work/demo}" "$@"
