"""``python -m model metrics PATH.npz``: stdout is one JSON object, bad input is one line on stderr."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.commands import metrics as metrics_command
from model.metrics import METRIC_KEYS

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_command(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    metrics_command.register(parser.add_subparsers(dest="command"))
    status = metrics_command.run(parser.parse_args(["metrics", str(path)]))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_set(path: Path, **overrides: np.ndarray) -> Path:
    masks = np.zeros((4, 6, 6), dtype=np.uint8)
    masks[2:, 2:4, 2:4] = 255
    arrays = {
        "labels": np.array([0, 0, 1, 1]),
        "scores": np.array([0.1, 0.4, 0.3, 0.9]),
        "masks": masks,
        "maps": masks / 255.0 + np.linspace(0, 0.5, 4 * 36).reshape(4, 6, 6),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def test_prints_exactly_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_command(write_set(tmp_path / "eval.npz"), capsys)
    assert status == 0 and err == ""
    result = json.loads(out)
    assert list(result) == list(METRIC_KEYS)
    assert result["image_auroc"] == pytest.approx(0.75)
    assert all(0.0 <= value <= 1.0 for value in result.values())


def test_one_class_labels_print_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_set(tmp_path / "eval.npz", labels=np.ones(4, dtype=np.int64))
    status, out, _ = run_command(path, capsys)
    result = json.loads(out)
    assert status == 0
    assert result["image_auroc"] is None and result["pixel_auroc"] is not None


@pytest.mark.parametrize(
    ("overrides", "drop", "message"),
    [
        ({}, "maps", "missing key(s) maps"),
        ({"labels": np.array([0, 1, 1, 3])}, None, "labels must hold only 0 and 1"),
        ({"scores": np.array([0.1, np.nan, 0.2, 0.3])}, None, "NaN or inf"),
        ({"maps": np.zeros((4, 5, 6))}, None, "maps must have shape"),
    ],
)
def test_bad_input_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides, drop, message
) -> None:
    path = write_set(tmp_path / "eval.npz", **overrides)
    if drop:
        with np.load(path) as archive:
            kept = {key: archive[key] for key in archive.files if key != drop}
        np.savez(path, **kept)
    status, out, err = run_command(path, capsys)
    assert status != 0 and out == ""
    assert message in err and err.count("\n") == 1


def test_unreadable_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "eval.npz"
    path.write_bytes(b"not an archive")
    status, out, err = run_command(path, capsys)
    assert status != 0 and out == "" and err.count("\n") == 1
    status, _, err = run_command(tmp_path / "absent.npz", capsys)
    assert status != 0 and "no such file" in err


def test_module_entry_point(tmp_path: Path) -> None:
    path = write_set(tmp_path / "eval.npz")
    done = subprocess.run(
        [sys.executable, "-m", "model", "metrics", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == set(METRIC_KEYS)
    bad = subprocess.run(
        [sys.executable, "-m", "model", "metrics", str(tmp_path / "absent.npz")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and bad.stdout == "" and "Traceback" not in bad.stderr
