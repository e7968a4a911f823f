#!/usr/bin/env bash
# Issue 11 item 6: the lite preset at 128 px (its default) and at 256 px on a small-object domain, the same
# number of epochs each (so the 256 px run costs ~4x the time), both evaluated per modality.
#
#   scripts/resolution_ablation.sh [ROOT]          (default runs/resolution; ROOT/px128, ROOT/px256)
#
# Environment: DATA (default shared:mulsen:button_cell: the cell covers about 8x8 of 128x128 pixels),
# EPOCHS (default 8), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${1:-runs/resolution}
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-shared:mulsen:button_cell}
EPOCHS=${EPOCHS:-8}
mkdir -p "$ROOT"

for size in 128 256; do
  run="$ROOT/px$size"
  if [[ ! -f "$run/evaluation/metrics.json" ]]; then
    resume=()
    [[ -f "$run/train_state.json" ]] && resume=(--resume)
    /usr/bin/time -f "train wall seconds %e" "$PYTHON" -m model train --preset lite --data "$DATA" \
      --out "$run" --epochs "$EPOCHS" --eval-every 0 --seed 0 --set image_size="$size" "${resume[@]}" \
      2>&1 | tee -a "$run.train.log"
    "$PYTHON" -m model evaluate --checkpoint "$run" --out "$run/evaluation" --heatmaps 3 \
      2>&1 | tee -a "$run.evaluate.log"
  fi
done
