"""`python -m export`: help for every command, one-line errors, and a verify report on the tiny bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from export.__main__ import main


@pytest.mark.parametrize("command", [[], ["bundle"], ["verify"], ["bench"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    assert "usage: python -m export" in capsys.readouterr().out


def test_missing_checkpoint_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "bundle",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1] == f"error: checkpoint folder not found: {tmp_path / 'nope'}"
    )
    assert "Traceback" not in result.stderr


def test_bad_target_fpr_is_an_argument_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["bundle", "--checkpoint", str(tmp_path), "--out", str(tmp_path), "--target-fpr", "1.5"])
    assert caught.value.code == 2
    assert "--target-fpr must be within [0, 1)" in capsys.readouterr().err


def verify_argv(bundle: Path, checkpoint: Path, *options: str) -> list[str]:
    """`export verify` of `bundle` against `checkpoint` on the synthetic data, plus `options`."""
    return ["verify", str(bundle), "--checkpoint", str(checkpoint), "--data", "synthetic", *options]


def test_verify_on_a_bundle_of_unknown_domains_fails_cleanly(
    tiny_bundle: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(verify_argv(tiny_bundle, tiny_checkpoint, "--domains", "synthetic/nowhere"))
    assert code == 1
    assert "unknown domain(s) synthetic/nowhere" in capsys.readouterr().err


def test_verify_report(tiny_bundle: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domains = ["--domains", "synthetic/tiles", "synthetic/parts"]
    code = main(verify_argv(tiny_bundle, tiny_checkpoint, *domains, "--max-samples", "2", "--json"))
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fold_max_abs_diff"] <= 1e-5
    for graph in ("frozen", "dynamic"):
        assert max(report["onnxruntime_max_abs_diff"][graph].values()) <= 5e-5
    parts = report["domains"]["synthetic/parts"]
    assert parts["test_samples"] == 4
    for metric in ("image_auroc", "pixel_auroc"):
        entry = parts[metric]
        assert entry["difference"] == pytest.approx(entry["per_sample"] - entry["frozen"])
    # the serving graph's threshold, set on the validation split, next to the rate it reaches on test
    rate = parts["false_positive_rate"]
    assert rate["target"] == 0.05 and rate["graph"] == "frozen" and rate["test_normal_images"] == 2
    assert rate["test_normals"] in (0.0, 0.5, 1.0) and not rate["threshold_split"].startswith("test")
    assert set(parts["validation"]) >= {"normalized_score_gap", "map_correlation", "frozen_ok", "split"}


def test_fp16_bundle_stays_close_to_the_float32_model(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fp16"
    domains = [
        "--data",
        "synthetic",
        "--domains",
        "synthetic/tiles",
        "synthetic/boards",
        "--max-samples",
        "6",
    ]
    assert main(["bundle", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--fp16", *domains]) == 0
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    initializer_types = {tensor.data_type for tensor in graph.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in initializer_types
    capsys.readouterr()
    assert main(["verify", str(out), "--checkpoint", str(tiny_checkpoint), *domains, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    scores = [report["onnxruntime_max_abs_diff"][graph]["image_score"] for graph in ("frozen", "dynamic")]
    assert max(scores) <= 1e-2
