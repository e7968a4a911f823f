"""scripts/recipe_ablation_table.py: the ablation's markdown table from its run folders."""

from __future__ import annotations

import json
from pathlib import Path

import recipe_ablation_table


def fake_run(folder: Path, steps: int, official: float, calibrated: float) -> Path:
    folder.mkdir(parents=True)
    progress = {
        "step": steps,
        "history": [
            {"mean_loss": 0.5, "routing": {"top_probability": 0.05, "domain_divergence": 0.0061}},
            {"mean_loss": 0.25, "routing": {}},  # a short last epoch without a routing sample
        ],
    }
    (folder / "train_state.json").write_text(json.dumps({"progress": progress}))
    fusions = {
        "code": {"synthetic/boards": {"image_auroc": official}},
        "calibrated_max": {"synthetic/boards": {"image_auroc": calibrated}},
    }
    (folder / "fusions.json").write_text(json.dumps({"fusions": fusions}))
    return folder


def test_one_row_per_run_in_order_with_both_fusions(tmp_path, capsys) -> None:
    runs = [
        fake_run(tmp_path / "0_official", 100, 0.8, 0.85),
        fake_run(tmp_path / "1_gn_floor", 90, 0.9, 0.95),
    ]
    assert recipe_ablation_table.main([str(run) for run in runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| row | steps |") and "synthetic/boards" in lines[0]
    assert lines[2] == "| 0_official | 100 | 0.250 | 0.050 | 0.0061 | 80.0 -> 85.0 |"
    assert lines[3].startswith("| 1_gn_floor | 90 |") and lines[3].endswith("90.0 -> 95.0 |")


def test_a_run_without_its_scores_is_one_clear_error(tmp_path, capsys) -> None:
    run = fake_run(tmp_path / "0_official", 100, 0.8, 0.85)
    (run / "fusions.json").unlink()
    assert recipe_ablation_table.main([str(run)]) == 1
    assert "run scripts/recipe_ablation.sh first" in capsys.readouterr().err
