"""Continual learning: adapt a model to a left-out domain vs train jointly on every domain.

For each left-out domain: train the lite model on the other domains, then `model adapt` it to the
left-out one; beside them one joint model on all domains (trained here, or an existing run given with
--joint). Every training has the same wall-clock budget, adapt a shorter one. Two suites:
`synthetic` (the embedded domains; minutes) and `shared` (every shared domain, as scripts/train_unified.sh;
leaves out magnetic_tile and the multimodal mulsen capsule; about an hour per training on one core).
The table compares, per left-out domain:
- the new domain's image / pixel AUROC after adapt vs the joint model's;
- the old domains' change through adapt (the adapted checkpoint vs its parent, both evaluated with
  per-sample routing by the training loop's final evaluation: the forgetting the paper reports; a bundle
  extended with `export add-domain` keeps the old domains' outputs bit for bit, so there it is zero);
- the share of parameters adapt tuned, and the wall time of adapt vs a full retraining.

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python scripts/continual_eval.py \
        [--suite synthetic] [--runs runs/continual] [--train-minutes 6] [--adapt-minutes 2] \
        [--joint RUN] [--cases NAME ...] [--out docs/results/continual_synthetic.json]

Runs already in --runs (a `<name>.wall.json` beside the folder) are reused, so a cut-off session resumes
and the cases can run in parallel processes (one --cases each), then once more without --cases for the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED_DATA = "synthetic,shared:magnetic_tile,shared:mvtec3d_tire,shared:mulsen:button_cell+capsule"


@dataclass(frozen=True)
class Case:
    """One left-out domain: the data spec the parent trains on, and the spec `adapt` adds."""

    name: str
    parent_data: str
    new_data: str


@dataclass(frozen=True)
class Suite:
    joint_data: str
    cases: tuple[Case, ...]
    bundle_check: str | None  # the case exported and extended with `export add-domain`


SUITES = {
    "synthetic": Suite(
        joint_data="synthetic",
        cases=(  # one rgb, one rgb + infrared + depth
            Case("tiles", "synthetic@parts+boards+brain", "synthetic@tiles"),
            Case("boards", "synthetic@tiles+parts+brain", "synthetic@boards"),
        ),
        bundle_check="boards",
    ),
    "shared": Suite(
        joint_data=SHARED_DATA,
        cases=(  # one gray, one rgb + infrared + depth
            Case(
                "magnetic_tile",
                "synthetic,shared:mvtec3d_tire,shared:mulsen:button_cell+capsule",
                "shared:magnetic_tile",
            ),
            Case(
                "capsule",
                "synthetic,shared:magnetic_tile,shared:mvtec3d_tire,shared:mulsen:button_cell",
                "shared:mulsen:capsule",
            ),
        ),
        bundle_check="capsule",
    ),
}


def run_once(runs: Path, name: str, argv: list[str], package: str = "model") -> dict[str, Any]:
    """Run ``python -m PACKAGE ARGV`` unless ``runs/NAME.wall.json`` says it ran; returns that record."""
    record_path = runs / f"{name}.wall.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    started = time.monotonic()
    with (runs / f"{name}.log").open("w") as log:
        code = subprocess.call([sys.executable, "-m", package, *argv], stdout=log, stderr=subprocess.STDOUT)
    record = {"run": name, "rc": code, "wall_s": time.monotonic() - started}
    if code != 0:
        raise SystemExit(f"error: run {name} failed (exit {code}); see {runs / f'{name}.log'}")
    record_path.write_text(json.dumps(record) + "\n")
    return record


def final_metrics(run: Path) -> dict[str, dict[str, float]]:
    """Per domain, the fused image/pixel AUROC of the run's last evaluation (the training loop's, or
    `model evaluate --out RUN/evaluation`'s)."""
    reports = sorted((run / "eval").glob("step_*.json")) or sorted(run.glob("evaluation/metrics.json"))
    if not reports:
        raise SystemExit(f"error: {run} has no evaluation (eval/step_*.json or evaluation/metrics.json)")
    domains = json.loads(reports[-1].read_text())["domains"]
    return {
        name: {key: report["metrics"]["fused"][key] for key in ("image_auroc", "pixel_auroc")}
        for name, report in domains.items()
    }


def bundle_metrics(bundle: Path, run: Path) -> dict[str, dict[str, float | None]]:
    """Per domain of a bundle: image / pixel AUROC of its frozen graph on the test split of the run's data."""
    import onnxruntime as ort

    from bundle.loader import load_bundle
    from export.samples import batches, select_domains
    from model.checkpoint import read_config
    from model.config import UniMMADConfig
    from model.data import parse_data_spec
    from model.metrics import auroc, pixel_metrics

    recorded = read_config(run)
    config = UniMMADConfig.from_dict(recorded["model"])
    manifest = load_bundle(bundle).manifest
    graph = str(bundle / manifest.graphs.frozen.file)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    sources = parse_data_spec(recorded["data"]["spec"])
    metrics = {}
    for name, spec in manifest.domains.items():
        (data,) = select_domains(sources, [name])
        scores, maps, labels, masks = [], [], [], []
        for batch in batches(data, data.test_refs(), config, 8):
            feeds = {"images": batch.images.numpy(), "domain": np.array([spec.index], dtype=np.int64)}
            score, fused = session.run(["image_score", "anomaly_map"], feeds)
            scores.append(score)
            maps.append(fused)
            labels.append(batch.labels)
            masks.append(batch.masks)
        metrics[name] = {
            "image_auroc": auroc(np.concatenate(scores), np.concatenate(labels)),
            "pixel_auroc": pixel_metrics(np.concatenate(masks), np.concatenate(maps))["pixel_auroc"],
        }
    return metrics


def added_domain(runs: Path, left_out: str) -> str:
    """The domain name `adapt` gave the left-out data (from the adapted run's lineage)."""
    lineage = json.loads((runs / f"adapt_{left_out}" / "config.json").read_text())["lineage"]
    (name,) = lineage["domains_added"]
    return name


def bundle_check(runs: Path, left_out: str) -> dict[str, Any]:
    """Export the parent of `left_out`, append the adapted domain with `export add-domain`, and score both
    bundles' frozen graphs on the test split: the old domains' figures must be the same in both."""
    parent, extended = (
        runs / "bundles" / f"minus_{left_out}",
        runs / "bundles" / f"minus_{left_out}+{left_out}",
    )
    export = run_once(
        runs,
        f"export_minus_{left_out}",
        ["bundle", "--checkpoint", str(runs / f"minus_{left_out}"), "--out", str(parent)],
        "export",
    )
    add_argv = ["add-domain", str(parent), "--checkpoint", str(runs / f"adapt_{left_out}")]
    add_argv += ["--domain", added_domain(runs, left_out), "--out", str(extended)]
    add = run_once(runs, f"add_domain_{left_out}", add_argv, "export")
    before = bundle_metrics(parent, runs / f"minus_{left_out}")
    after = bundle_metrics(extended, runs / f"adapt_{left_out}")
    return {
        "parent_bundle": before,
        "extended_bundle": after,
        "old_domains_unchanged": all(after[name] == value for name, value in before.items()),
        "wall_s": {"full_export": export["wall_s"], "add_domain": add["wall_s"]},
    }


def loop_seconds(run: Path) -> float:
    """Seconds the run spent in its training loop (train_state.json; evaluation and data loading excluded)."""
    return json.loads((run / "train_state.json").read_text())["progress"]["train_seconds"]


def left_out_row(
    runs: Path,
    left_out: str,
    joint: dict[str, dict[str, float]],
    joint_loop_s: float,
    walls: dict[str, float | None],
) -> dict[str, Any]:
    new = added_domain(runs, left_out)
    parent = final_metrics(runs / f"minus_{left_out}")
    adapted = final_metrics(runs / f"adapt_{left_out}")
    lineage = json.loads((runs / f"adapt_{left_out}" / "config.json").read_text())["lineage"]
    change = {
        name: {key: 100 * (adapted[name][key] - parent[name][key]) for key in ("image_auroc", "pixel_auroc")}
        for name in parent
    }
    return {
        "new_domain": new,
        "new_domain_auroc": {"adapted": adapted[new], "joint": joint[new]},
        "old_domain_change_points": change,
        "old_domain_mean_change_points": {
            key: statistics.fmean(entry[key] for entry in change.values())
            for key in ("image_auroc", "pixel_auroc")
        },
        "tuned": lineage["tuned"],
        "replay": lineage["replay"],
        "wall_s": {
            "adapt": walls[f"adapt_{left_out}"],
            "parent_training": walls[f"minus_{left_out}"],
            "joint_retraining": walls["joint"],
        },
        "training_loop_s": {
            "adapt": loop_seconds(runs / f"adapt_{left_out}"),
            "joint_retraining": joint_loop_s,
        },
    }


def minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| left-out domain | I-AUROC adapted / joint | P-AUROC adapted / joint "
            "| old domains Δ I / P-AUROC (points, mean) | tuned | wall (loop): adapt / full retrain |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        new, mean = row["new_domain_auroc"], row["old_domain_mean_change_points"]
        lines.append(
            f"| {row['new_domain']} | {100 * new['adapted']['image_auroc']:.1f} / {100 * new['joint']['image_auroc']:.1f} "
            f"| {100 * new['adapted']['pixel_auroc']:.1f} / {100 * new['joint']['pixel_auroc']:.1f} "
            f"| {mean['image_auroc']:+.1f} / {mean['pixel_auroc']:+.1f} "
            f"| {100 * row['tuned']['share']:.1f} % ({row['tuned']['parameters']:,}) "
            f"| {minutes(row['wall_s']['adapt'])} ({minutes(row['training_loop_s']['adapt'])}) / "
            f"{minutes(row['wall_s']['joint_retraining'])} ({minutes(row['training_loop_s']['joint_retraining'])}) min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="synthetic")
    parser.add_argument("--runs", type=Path, default=Path("runs/continual"))
    parser.add_argument("--train-minutes", type=float, default=6.0)
    parser.add_argument("--adapt-minutes", type=float, default=2.0)
    parser.add_argument(
        "--joint", type=Path, help="an existing run trained on every domain of the suite (default: train one)"
    )
    parser.add_argument(
        "--cases", nargs="+", help="run only these left-out cases (default: all, and the table)"
    )
    parser.add_argument(
        "--no-bundle",
        action="store_true",
        help="skip exporting the parent bundle and extending it with add-domain",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/continual_synthetic.json"))
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    known = {case.name for case in suite.cases}
    if unknown := set(args.cases or ()) - known:
        parser.error(f"unknown case(s) {sorted(unknown)}; the {args.suite} suite has {sorted(known)}")
    args.runs.mkdir(parents=True, exist_ok=True)
    budget = ["--preset", "lite", "--max-minutes", str(args.train_minutes)]
    walls: dict[str, float | None] = {}
    if args.joint is None:
        joint_run = args.runs / "joint"
        joint_argv = ["train", "--data", suite.joint_data, "--out", str(joint_run), *budget]
        walls["joint"] = run_once(args.runs, "joint", joint_argv)["wall_s"]
    else:
        joint_run, walls["joint"] = args.joint, None
    cases = [case for case in suite.cases if args.cases is None or case.name in args.cases]
    for case in cases:
        parent = args.runs / f"minus_{case.name}"
        parent_argv = ["train", "--data", case.parent_data, "--out", str(parent), *budget]
        walls[parent.name] = run_once(args.runs, parent.name, parent_argv)["wall_s"]
        adapted = f"adapt_{case.name}"
        adapt_argv = ["adapt", "--checkpoint", str(parent), "--data", case.new_data]
        adapt_argv += ["--out", str(args.runs / adapted), "--max-minutes", str(args.adapt_minutes)]
        walls[adapted] = run_once(args.runs, adapted, adapt_argv)["wall_s"]
    if args.cases is not None:
        return 0  # a partial run trains only; the table comes from a run over every case
    joint, joint_loop_s = final_metrics(joint_run), loop_seconds(joint_run)
    rows = [left_out_row(args.runs, case.name, joint, joint_loop_s, walls) for case in cases]
    if suite.bundle_check is not None and not args.no_bundle:
        checked = [case.name for case in cases].index(suite.bundle_check)
        rows[checked]["bundle"] = bundle_check(args.runs, suite.bundle_check)
    report = {
        "setup": {
            "suite": args.suite,
            "data": suite.joint_data,
            "preset": "lite, CPU, one thread",
            "train_minutes": args.train_minutes,
            "adapt_minutes": args.adapt_minutes,
            "joint": str(joint_run),
            "metrics": "fused image/pixel AUROC of each run's final evaluation (test split, per-sample routing)",
        },
        "rows": rows,
        "markdown": markdown(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
