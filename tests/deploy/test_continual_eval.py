"""scripts/continual_eval.py: the leave-one-out table from finished runs (nothing trained again)."""

from __future__ import annotations

import json
from pathlib import Path

import continual_eval
import pytest

OLD = ("synthetic/parts", "synthetic/brain")


def evaluation(folder: Path, relative: str, metrics: dict[str, tuple[float, float]]) -> None:
    """A run's evaluation report with fused image / pixel AUROC per domain."""
    report = {
        "domains": {
            name: {"metrics": {"fused": {"image_auroc": image, "pixel_auroc": pixel}}}
            for name, (image, pixel) in metrics.items()
        }
    }
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def train_state(folder: Path, seconds: float) -> None:
    (folder / "train_state.json").write_text(json.dumps({"progress": {"train_seconds": seconds}}))


def finished_case(runs: Path, name: str, parent: tuple[float, float], adapted: tuple[float, float]) -> None:
    """minus_NAME and adapt_NAME as the script leaves them, with their wall-time records."""
    new = f"synthetic/{name}"
    evaluation(runs / f"minus_{name}", "eval/step_000100.json", dict.fromkeys(OLD, parent))
    adapted_metrics = dict.fromkeys(OLD, adapted) | {new: (0.9, 0.95)}
    evaluation(runs / f"adapt_{name}", "eval/step_000130.json", adapted_metrics)
    train_state(runs / f"adapt_{name}", 60.0)
    lineage = {
        "domains_added": [new],
        "tuned": {"share": 0.06, "parameters": 434944},
        "replay": {"fraction": 0.01},
    }
    (runs / f"adapt_{name}" / "config.json").write_text(json.dumps({"lineage": lineage}))
    for run, wall in ((f"minus_{name}", 600.0), (f"adapt_{name}", 120.0)):
        (runs / f"{run}.wall.json").write_text(json.dumps({"run": run, "rc": 0, "wall_s": wall}))


def test_the_table_compares_each_left_out_domain_with_an_existing_joint_run(tmp_path: Path, capsys) -> None:
    runs, joint = tmp_path / "runs", tmp_path / "joint"
    finished_case(runs, "tiles", parent=(0.8, 0.9), adapted=(0.7, 0.9))
    finished_case(runs, "boards", parent=(0.8, 0.9), adapted=(0.8, 0.88))
    joint_metrics = dict.fromkeys((*OLD, "synthetic/tiles", "synthetic/boards"), (0.6, 0.85))
    evaluation(joint, "evaluation/metrics.json", joint_metrics)  # `model evaluate`'s report
    train_state(joint, 3600.0)
    out = tmp_path / "report.json"
    argv = ["--runs", str(runs), "--joint", str(joint), "--no-bundle", "--out", str(out)]
    assert continual_eval.main(argv) == 0
    tiles, boards = json.loads(out.read_text())["rows"]
    assert tiles["new_domain"] == "synthetic/tiles"
    assert tiles["new_domain_auroc"]["adapted"] == {"image_auroc": 0.9, "pixel_auroc": 0.95}
    assert tiles["new_domain_auroc"]["joint"] == {"image_auroc": 0.6, "pixel_auroc": 0.85}
    # old domains: adapted minus parent, in points
    assert tiles["old_domain_mean_change_points"]["image_auroc"] == pytest.approx(-10.0)
    assert boards["old_domain_mean_change_points"]["pixel_auroc"] == pytest.approx(-2.0)
    assert tiles["wall_s"]["joint_retraining"] is None  # the joint run was not trained (or timed) here
    assert tiles["training_loop_s"] == {"adapt": 60.0, "joint_retraining": 3600.0}
    table = capsys.readouterr().out.splitlines()
    assert table[2] == (
        "| synthetic/tiles | 90.0 / 60.0 | 95.0 / 85.0 | -10.0 / +0.0 | 6.0 % (434,944) | 2.0 (1.0) / ? (60.0) min |"
    )


def test_an_unknown_case_is_an_argument_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        continual_eval.main(["--suite", "shared", "--runs", str(tmp_path), "--cases", "bottle"])
    assert caught.value.code == 2
    assert (
        "unknown case(s) ['bottle']; the shared suite has ['capsule', 'magnetic_tile']"
        in capsys.readouterr().err
    )
