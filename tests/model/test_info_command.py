"""`python -m model info`: one JSON object with the spec's paper-preset counts; one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_KEYS = {"params_total", "params_active", "params_trainable", "gmacs", "input_size", "modules"}


def run_model_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model", *args],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_paper_preset_counts_match_the_spec() -> None:
    result = run_model_cli("info", "--preset", "paper", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert REQUIRED_KEYS <= set(report)
    assert report["params_total"] == 177_700_934
    assert report["params_total"] - report["params_active"] == 41_287_680
    assert report["params_total"] - report["params_trainable"] == 24_862_528  # the frozen prior
    assert report["gmacs"] == pytest.approx(102.3, abs=0.05)
    assert report["input_size"] == [1, 3, 256, 256]
    assert sum(part["params"] for part in report["modules"].values()) == report["params_total"]
    assert sum(part["gmacs"] for part in report["modules"].values()) == pytest.approx(
        report["gmacs"], rel=1e-3
    )


def test_more_modalities_cost_more_prior_and_cmoe_but_not_encoder() -> None:
    one = json.loads(run_model_cli("info", "--preset", "lite", "--json").stdout)
    two = json.loads(run_model_cli("info", "--preset", "lite", "--modalities", "rgb,depth", "--json").stdout)
    assert two["params_total"] == one["params_total"] and two["input_size"][0] == 2
    assert two["modules"]["encoder"]["gmacs"] == one["modules"]["encoder"]["gmacs"]
    assert two["modules"]["prior"]["gmacs"] == pytest.approx(2 * one["modules"]["prior"]["gmacs"])
    assert two["modules"]["c_moes.0"]["gmacs"] == pytest.approx(
        2 * one["modules"]["c_moes.0"]["gmacs"], rel=0.01
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--modalities", "rgb,depth,a,b,c"], "at most 4"),
        (["info", "--modalities", "rgb,rgb"], "repeats"),
        (["info", "--preset", "huge"], "invalid choice"),
        ([], "required: COMMAND"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = run_model_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_never_imports_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from model.__main__ import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['info', '--help'])\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr
