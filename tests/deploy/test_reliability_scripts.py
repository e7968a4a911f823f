"""The reliability scripts run end to end against a live service on the tiny bundle, and can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bad_inputs
import fault_checks
import load_test
from deploy_files import REPO


def test_fault_checks_pass_on_a_good_bundle(tiny_bundle: Path, capsys) -> None:
    assert fault_checks.main(["--bundle", str(tiny_bundle), "--warmup-batch", "16"]) == 0
    table = capsys.readouterr().out
    for case in [*fault_checks.BROKEN_BUNDLES, "/readyz waits for warm-up"]:
        assert f"{case} " in table
    assert "FAIL" not in table


def test_a_service_that_keeps_running_fails_the_startup_check(
    tiny_bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(fault_checks.BROKEN_BUNDLES, "nothing broken", lambda bundle: None)
    outcome = fault_checks.check_startup_failure("nothing broken", tiny_bundle, tmp_path, timeout_s=4)
    assert not outcome.passed and "still running" in outcome.detail


def test_bad_input_corpus_gets_its_expected_4xx_json_and_leaves_the_service_ready(
    tiny_bundle: Path, capsys
) -> None:
    assert len(bad_inputs.CORPUS) >= 25
    assert all(400 <= bad.expected_status < 500 for bad in bad_inputs.CORPUS)
    assert bad_inputs.main(["--bundle", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    total = len(bad_inputs.CORPUS)
    assert f"{total}/{total} kinds answered their expected 4xx with an error JSON" in out
    assert "afterwards: True" in out


def test_bad_input_judge_wants_the_expected_status_and_an_error_json() -> None:
    import httpx

    case = bad_inputs.BadRequest("x", 422, bad_inputs.raw("GET", "/"))
    error = {"error": {"code": "c", "message": "m"}}
    assert not bad_inputs.judge(case, httpx.Response(500, json=error)).passed
    assert not bad_inputs.judge(case, httpx.Response(415, json=error)).passed
    assert not bad_inputs.judge(case, httpx.Response(422, text="plain")).passed
    assert bad_inputs.judge(case, httpx.Response(422, json=error)).passed


def test_load_test_reports_only_200_and_503_and_memory(tiny_bundle: Path, capsys) -> None:
    code = load_test.main(
        ["--bundle", str(tiny_bundle), "--capacity-s", "1", "--duration-s", "2", "--max-in-flight", "32"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert set(report["overload"]["statuses"]) <= {"200", "503"} and report["overload"]["statuses"]
    assert report["capacity"]["admitted_latency_ms"]["p99"] > 0
    assert report["service_rss_mb"]["before"] > 0 and report["service_rss_mb"]["after"] > 0
    assert report["ready_after"] is True


def test_every_script_has_help_and_rejects_remote_targets() -> None:
    scripts = [
        REPO / "scripts" / "bad_inputs.py",
        REPO / "scripts" / "fault_checks.py",
        REPO / "benchmarks" / "load_test.py",
    ]
    for script in scripts:
        assert (
            subprocess.run(
                [sys.executable, str(script), "--help"], check=False, capture_output=True, timeout=60
            ).returncode
            == 0
        )
    for script in scripts[0], scripts[2]:
        result = subprocess.run(
            [sys.executable, str(script), "--url", "http://192.0.2.1:8000"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and result.stderr.strip().startswith("error:"), result.stderr
