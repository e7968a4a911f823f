#!/usr/bin/env bash
# Issue 11's ablation: the lite recipe's training fixes added one at a time, each run on the same data with
# the same wall-clock budget and seed, every checkpoint scored under the official fusion and under
# calibrated max (benchmarks/fusion_ablation.py), the table rendered by scripts/recipe_ablation_table.py.
#
#   scripts/recipe_ablation.sh [ROOT]          (default runs/ablation; one run folder per row)
#
# Environment: DATA (default synthetic,shared:mulsen:button_cell), MINUTES (training budget per row,
# default 10), PYTHON (default .venv/bin/python). Rows (each adds one fix to the row above):
#   0_official  the official rules as the previous model ran them: GroupNorm(32, E) inside the C-MoE (2
#               channels per group at E = 64), balance loss annealed over the whole run, no warm-up. The
#               other fix of that model, the signed head, is not optional: a ReLU head on Lite0's signed
#               prior is refused when the model is built (model.unimmad.check_target_reachable).
#   1_gn_floor  + at least 8 channels per C-MoE GroupNorm group
#   2_anneal    + balance loss annealed over the first 30 % of the steps
#   3_warmup    + 3 % linear warm-up: the lite preset as it ships
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${1:-runs/ablation}
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-synthetic,shared:mulsen:button_cell}
MINUTES=${MINUTES:-10}

declare -A ROWS=(
  [0_official]="--set moe_min_group_channels=2 --set balance_anneal_fraction=1.0 --set warmup_fraction=0"
  [1_gn_floor]="--set balance_anneal_fraction=1.0 --set warmup_fraction=0"
  [2_anneal]="--set warmup_fraction=0"
  [3_warmup]=""
)

mkdir -p "$ROOT"
for row in 0_official 1_gn_floor 2_anneal 3_warmup; do
  run="$ROOT/$row"
  if [[ ! -f "$run/fusions.json" ]]; then
    resume=()
    [[ -f "$run/train_state.json" ]] && resume=(--resume)
    # shellcheck disable=SC2086  # the row's overrides are separate words
    "$PYTHON" -m model train --preset lite --data "$DATA" --out "$run" --max-minutes "$MINUTES" \
      --eval-every 0 --seed 0 ${ROWS[$row]} "${resume[@]}" 2>&1 | tee -a "$run.train.log"
    "$PYTHON" benchmarks/fusion_ablation.py --checkpoint "$run" --fusions code calibrated_max \
      --out "$run/fusions.json" > /dev/null
  fi
done
"$PYTHON" scripts/recipe_ablation_table.py "$ROOT"/{0_official,1_gn_floor,2_anneal,3_warmup}
