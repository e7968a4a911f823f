"""scripts/domain_ood_eval.py on the subset bundle: the report's parts, and RESULTS.md edited in place."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from service_helpers import as_format_2, copy_bundle, rewrite_manifest

sys.path.insert(0, str(Path(__file__).parents[2] / "scripts"))

from domain_ood_eval import END_MARK, START_MARK, main


def _argv(bundle: Path, tmp_path: Path) -> list[str]:
    """A quick run: two test samples per domain, the synthetic data standing in for held-out data."""
    return [
        *("--bundle", str(bundle), "--data", "synthetic", "--ood-data", "synthetic", "--limit", "2"),
        *("--generated", "1", "--swaps", "1", "--out", str(tmp_path / "report.json")),
        *("--results-md", str(tmp_path / "RESULTS.md")),
    ]


def test_the_report_covers_every_part_and_rewrites_only_its_section(
    pair_bundle: Path, tmp_path: Path
) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nwritten by someone else\n", encoding="utf-8")
    assert main(_argv(pair_bundle, tmp_path)) == 0
    assert main(_argv(pair_bundle, tmp_path)) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["known_domains"]["per_domain"]) == {"synthetic/parts", "synthetic/boards"}
    assert report["known_domains"]["samples"] == 4
    groups = report["out_of_distribution"]["groups"]
    assert {"noise (rgb+depth)", "blank frame (rgb+infrared+depth)", "infrared images sent as rgb"} <= set(
        groups
    )
    assert {"rgb+infrared+depth", "rgb+depth"} <= set(report["subsets"]["synthetic/boards"])
    assert set(report["pass_cost_ms"]) == {"2", "3"}
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nwritten by someone else\n")
    assert text.count(START_MARK) == text.count(END_MARK) == 1


def test_a_bundle_without_statistics_is_one_line(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "format2")
    rewrite_manifest(bundle, as_format_2)
    assert main(_argv(bundle, tmp_path)) == 1
    assert capsys.readouterr().err.strip().endswith("has no domain statistics (format 2): re-export it")
