"""Huge uploads cost the live service little memory: 40 MP TIFFs are reduced while they are decoded."""

from __future__ import annotations

import upload_memory
from live_service import LiveService

# The tiny bundle's input is 64 px, so each axis is kept at 512 to 1023 pixels; held whole, the images of
# one request of the chosen domain (rgb + infrared + depth) decode to over 700 MB.
PEAK_GROWTH_BUDGET_MB = 300


def test_concurrent_40_megapixel_tiffs_stay_within_the_memory_budget(served: LiveService) -> None:
    report = upload_memory.run(served.url, served.pid, domain=None, requests=3, megapixels=39.9)
    assert report["statuses"] == {"200": 3}
    assert report["decoded_mb_per_request_if_held_whole"] > 2 * PEAK_GROWTH_BUDGET_MB
    assert report["peak_growth_mb"] < PEAK_GROWTH_BUDGET_MB, report


def test_the_budget_check_fails_a_refused_request_or_an_overrun(served: LiveService, capsys) -> None:
    over = upload_memory.main(
        [
            "--url",
            served.url,
            "--pid",
            str(served.pid),
            "--requests",
            "1",
            "--megapixels",
            "1",
            "--budget-mb",
            "-1",
        ]
    )
    assert over == 1 and '"peak_growth_mb"' in capsys.readouterr().out
