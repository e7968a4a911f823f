#!/usr/bin/env bash
# Produces docs/RESULTS.md (training-results section): one unified lite UniMMAD trained on CPU on the synthetic set,
# magnetic_tile, mvtec3d_ad/tire and mulsen_ad_derived button_cell + capsule, evaluated, the prior cache
# benchmarked, and the section rendered from those files.
#
#   scripts/train_unified.sh [RUN_DIR]          (default runs/unified_lite; logs in RUN_DIR/*.log)
#
# Environment: MAX_MINUTES (wall-clock budget of training, default 65; the schedule is sized to it and
# ends annealed), WORKERS (data-loading processes, default 0), PYTHON (default .venv/bin/python).
# The recipe (epochs cap, warm-up, balance annealing, fusion) is the lite preset's (model/config.py).
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
  --max-minutes "${MAX_MINUTES:-65}" --eval-every 0 --workers "${WORKERS:-0}" \
  --seed 0 "${resume[@]}" 2>&1 | tee -a "$RUN_DIR/train.log"

"$PYTHON" -m model evaluate --checkpoint "$RUN_DIR" --out "$RUN_DIR/evaluation" --batch-size 8 --heatmaps 3 \
  2>&1 | tee -a "$RUN_DIR/evaluate.log"

"$PYTHON" scripts/bench_prior_cache.py --steps 5 > "$RUN_DIR/bench_prior_cache.json"
"$PYTHON" scripts/write_results.py "$RUN_DIR" --bench "$RUN_DIR/bench_prior_cache.json" --out docs/RESULTS.md
