#!/usr/bin/env bash
# Produces the results in docs/RESULTS.md: one unified lite UniMMAD trained on CPU on the synthetic set,
# magnetic_tile, mvtec3d_ad/tire and mulsen_ad_derived button_cell + capsule, then evaluated.
#
#   scripts/train_unified.sh [RUN_DIR]          (default runs/unified_lite; logs in RUN_DIR/*.log)
#
# Environment: EPOCHS (default 12), MAX_MINUTES (wall-clock budget of training, default 35),
# WORKERS (data-loading processes, default 1), PYTHON (default .venv/bin/python).
# Rerunning with an existing RUN_DIR resumes its training where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=${1:-runs/unified_lite}
PYTHON=${PYTHON:-.venv/bin/python}
DATA="synthetic,shared:magnetic_tile,shared:mvtec3d_tire,shared:mulsen:button_cell+capsule"
mkdir -p "$RUN_DIR"

resume=()
[[ -f "$RUN_DIR/train_state.json" ]] && resume=(--resume)
"$PYTHON" -m model train --preset lite --data "$DATA" --out "$RUN_DIR" \
  --epochs "${EPOCHS:-12}" --max-minutes "${MAX_MINUTES:-35}" --eval-every 0 --workers "${WORKERS:-1}" \
  --seed 0 "${resume[@]}" 2>&1 | tee -a "$RUN_DIR/train.log"

"$PYTHON" -m model evaluate --checkpoint "$RUN_DIR" --out "$RUN_DIR/evaluation" --batch-size 8 --heatmaps 3 \
  2>&1 | tee -a "$RUN_DIR/evaluate.log"
