"""End to end on tiny synthetic data: train, resume where a run stopped, evaluate via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.__main__ import main
from model.checkpoint import read_config
from model.train import TrainOptions, train

SPEC = "synthetic"


@pytest.fixture(scope="module")
def finished_run(tiny_config, tiny_synthetic, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run")
    result = train(
        TrainOptions(data=SPEC, out=out, eval_every=2, holdout_fraction=0.2),
        tiny_config,
        tiny_synthetic,
        allow_random_prior=True,
    )
    return out, result


def test_train_writes_checkpoint_holdout_and_periodic_evaluation(finished_run) -> None:
    out, result = finished_run
    assert (
        result.finished and result.epochs_done == 2 and result.step == 2 * 4
    )  # 4 domains x 4 train / batch 4
    assert result.cache_stats["misses"] > 0 and result.cache_stats["hits"] > 0  # epoch 2 reads the cache
    config = read_config(out)
    holdout = config["data"]["holdout"]["ids"]
    assert set(holdout) == {"synthetic/tiles", "synthetic/parts", "synthetic/boards", "synthetic/brain"}
    assert all(len(ids) == 2 for ids in holdout.values())  # ceil(0.2 * 6)
    assert all(domain["train_samples"] == 4 for domain in config["data"]["domains"])
    report = json.loads((out / "eval" / "step_000008.json").read_text())
    assert set(report["domains"]) == set(holdout)


def test_resume_after_a_time_budget_continues_the_step_count(tiny_config, tiny_synthetic, tmp_path) -> None:
    options = TrainOptions(data=SPEC, out=tmp_path, eval_every=0, max_minutes=1e-6, holdout_fraction=0.0)
    stopped = train(options, tiny_config, tiny_synthetic, allow_random_prior=True)
    assert (stopped.step, stopped.epochs_done, stopped.finished) == (1, 0, False)
    with pytest.raises(ValueError, match="--resume"):
        train(options, tiny_config, tiny_synthetic, allow_random_prior=True)
    resumed = train(
        TrainOptions(data=SPEC, out=tmp_path, eval_every=0, resume=True),
        tiny_config,
        tiny_synthetic,
        allow_random_prior=True,
    )
    # The recorded holdout fraction (0) wins over the default: 4 domains x 6 samples / batch 4 = 6 steps.
    assert (resumed.step, resumed.epochs_done, resumed.finished) == (2 * 6, 2, True)
    assert [entry["epoch"] for entry in resumed.history] == [1, 2]


def test_evaluate_command_writes_json_markdown_and_heatmaps(finished_run, tmp_path, capsys) -> None:
    out, _ = finished_run
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out),
                "--out",
                str(tmp_path),
                "--batch-size",
                "5",
                "--heatmaps",
                "1",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert printed["image_auroc"] == metrics["summary"]["mean_over_domains"]["image_auroc"]
    boards = metrics["domains"]["synthetic/boards"]
    assert set(boards["metrics"]) == {"fused", "rgb", "infrared", "depth"}
    assert set(boards["image_auroc_by_defect_modality"]) == {"rgb", "infrared", "depth"}
    fused = dict(boards["metrics"]["fused"])
    low, high = fused.pop("image_auroc_ci95")  # the bootstrap interval brackets the image AUROC
    assert 0 <= low <= fused["image_auroc"] <= high <= 1
    assert all(0 <= value <= 1 for value in fused.values() if value is not None)
    markdown = (tmp_path / "metrics.md").read_text()
    assert "| synthetic/brain | t1ce |" in markdown and "Per defect group" not in markdown
    pngs = sorted(path.relative_to(tmp_path).as_posix() for path in (tmp_path / "heatmaps").rglob("*.png"))
    assert len(pngs) == 8 and "heatmaps/synthetic__tiles/normal_synthetic_tiles_test_0000.png" in pngs


def test_evaluation_does_not_depend_on_batch_size(finished_run, tiny_synthetic) -> None:
    from model.checkpoint import load_checkpoint
    from model.data import parse_data_spec
    from model.evaluate import evaluate_model

    model, _ = load_checkpoint(finished_run[0])
    sources = parse_data_spec(SPEC, synthetic=tiny_synthetic)
    # Batch 1 is out of reach here only because the 32 px tiny config squeezes its code to 1x1 (GroupNorm);
    # batches of 3 also split the 5 normals the statistics are fitted on without leaving one alone.
    one = evaluate_model(model, sources, batch_size=3, domains=["synthetic/parts"])
    many = evaluate_model(model, sources, batch_size=6, domains=["synthetic/parts"])
    for source, row in one["domains"]["synthetic/parts"]["metrics"].items():
        for key, value in row.items():
            assert value == pytest.approx(
                many["domains"]["synthetic/parts"]["metrics"][source][key], abs=1e-6
            )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "nowhere:1", "--out", "{tmp}/r"], "unknown source"),
        (["train", "--data", "synthetic", "--out", "{tmp}/r", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--data", "synthetic", "--out", "{tmp}/r", "--precision", "bf16"], "needs --device cuda"),
        (["train", "--data", "synthetic", "--out", "{tmp}/r", "--resume"], "no resumable checkpoint"),
        (["evaluate", "--checkpoint", "{tmp}/absent", "--out", "{tmp}/e"], "checkpoint folder not found"),
        (["train", "--data", "synthetic", "--out", "{tmp}/r", "--set", "image_size=100"], "multiple of 32"),
    ],
)
def test_bad_arguments_fail_with_one_line(argv, message, tmp_path, capsys) -> None:
    assert main([part.format(tmp=tmp_path) for part in argv]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error


@pytest.mark.parametrize(
    ("override", "message"), [("no_such_field=1", "unknown config field"), ("top_k", "expected FIELD=VALUE")]
)
def test_a_bad_config_override_is_a_usage_error(override, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--set", override])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_config_overrides_parse_json_values_and_keep_text() -> None:
    from model.commands.train import config_override

    assert config_override("kernel_sizes=[1,3]") == ("kernel_sizes", (1, 3))
    assert config_override("balance_anneal_fraction=1.0") == ("balance_anneal_fraction", 1.0)
    assert config_override("anomaly_fusion=code") == ("anomaly_fusion", "code")


def test_a_run_ends_annealed_and_reports_routing_health_per_gate_and_domain(
    finished_run, tiny_config
) -> None:
    out, result = finished_run
    last = result.history[-1]
    assert last["lr"] == 0.0  # the cosine reached its end with the run
    assert last["balance_weight"] == pytest.approx(tiny_config.balance_floor)  # annealed within the run
    routing = json.loads((out / "routing.json").read_text())
    assert len(routing["gates"]) == 3 * len(tiny_config.kernel_sizes)
    for gate in routing["gates"].values():
        for stats in gate["domains"].values():
            assert 1 / tiny_config.leaders <= stats["top_probability"] <= 1
            assert 0 <= stats["entropy"] <= 1 and 1 <= stats["leaders_used"] <= tiny_config.leaders
    assert set(last["routing"]) == {"top_probability", "entropy", "leaders_used", "domain_divergence"}


def test_eval_every_end_evaluates_only_when_the_schedule_is_done(
    tiny_config, tiny_synthetic, tmp_path
) -> None:
    options = TrainOptions(data=SPEC, out=tmp_path, eval_every=None, holdout_fraction=0.2)
    result = train(options, tiny_config, tiny_synthetic, allow_random_prior=True)
    assert result.finished and result.epochs_done == 2
    assert sorted(path.name for path in (tmp_path / "eval").glob("*.json")) == ["step_000008.json"]


@pytest.mark.parametrize(
    ("command", "given", "expected"),
    [("train", None, 10), ("adapt", None, None), ("adapt", "3", 3), ("train", "end", None)],
)
def test_eval_every_defaults_and_parses_end(command, given, expected) -> None:
    from model.__main__ import build_parser

    argv = [command, "--data", "synthetic", "--out", "runs/x"]
    argv += ["--checkpoint", "runs/parent"] if command == "adapt" else []
    argv += ["--eval-every", given] if given is not None else []
    assert build_parser().parse_args(argv).eval_every == expected


def test_eval_every_rejects_a_word_other_than_end(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--data", "synthetic", "--out", "runs/x", "--eval-every", "often"])
    assert stopped.value.code == 2
    assert "expected a number of epochs or 'end'" in capsys.readouterr().err


def test_report_gives_each_sample_its_modality_scores_and_the_normals_they_compare_with(
    finished_run, tiny_synthetic
) -> None:
    from model.checkpoint import load_checkpoint
    from model.data import parse_data_spec
    from model.evaluate import evaluate_model
    from model.metrics import auroc

    model, _ = load_checkpoint(finished_run[0])
    report = evaluate_model(
        model, parse_data_spec(SPEC, synthetic=tiny_synthetic), batch_size=3, domains=["synthetic/boards"]
    )
    boards = report["domains"]["synthetic/boards"]
    labels = np.array([entry["label"] for entry in boards["scores"]])
    for name in boards["modalities"]:  # a modality's AUROC follows from the per-sample scores reported
        scores = np.array([entry["modality_scores"][name] for entry in boards["scores"]])
        assert auroc(scores, labels) == pytest.approx(boards["metrics"][name]["image_auroc"])
    validation = boards["decision"]["validation"]
    assert len(validation["modality_score_mean"]) == len(validation["modality_score_std"]) == 3
    assert all(std >= 0 for std in validation["modality_score_std"])
