"""`model adapt`: new domains learned by tuning spec 9's groups only, with replay, lineage and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.__main__ import main
from model.adapt import adapt, count_tuned, tuned_group
from model.checkpoint import MODEL_FILE, read_config
from model.complexity import build_meta_model
from model.config import preset
from model.train import TrainOptions, train

PARENT_SPEC = "synthetic@tiles+parts+brain"


@pytest.fixture(scope="module")
def parent_run(tiny_config, tiny_synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent")
    train(
        TrainOptions(data=PARENT_SPEC, out=out, eval_every=0, holdout_fraction=0.2),
        tiny_config,
        tiny_synthetic,
        allow_random_prior=True,
    )
    return out


def test_adapt_moves_only_the_tuned_groups_records_lineage_and_resumes(
    parent_run, tiny_synthetic, tmp_path
) -> None:
    options = TrainOptions(
        data="synthetic@boards", out=tmp_path, eval_every=1, max_minutes=1e-6, holdout_fraction=0.2
    )
    stopped = adapt(parent_run, options, replay=0.2, synthetic=tiny_synthetic)
    assert (stopped.step, stopped.finished) == (1, False)
    resume = TrainOptions(
        data="synthetic@boards", out=tmp_path, eval_every=1, resume=True, holdout_fraction=0.2
    )
    resumed = adapt(parent_run, resume, replay=0.2, synthetic=tiny_synthetic)
    # 4 boards items kept of 6 (0.2 holdout) + ceil(0.2 * 4) = 1 replayed per old domain = 7 items,
    # batch 4: 1 step per epoch, 2 epochs.
    assert (resumed.step, resumed.finished) == (2, True)

    parent = load_file(str(parent_run / MODEL_FILE))
    adapted = load_file(str(tmp_path / MODEL_FILE))
    changed = {name for name in parent if not torch.equal(parent[name], adapted[name])}
    assert changed and all(tuned_group(name) is not None for name in changed)
    assert {tuned_group(name) for name in changed} == {"moe_leaders", "condition_router", "aggregation_conv"}

    config = read_config(tmp_path)
    lineage = config["lineage"]
    assert lineage["parent"] == str(parent_run.resolve()) and lineage["domains_added"] == ["synthetic/boards"]
    assert lineage["replay"]["items"] == {"synthetic/tiles": 1, "synthetic/parts": 1, "synthetic/brain": 1}
    assert 0 < lineage["tuned"]["share"] < 0.1
    names = [domain["name"] for domain in config["data"]["domains"]]
    assert names == ["synthetic/tiles", "synthetic/parts", "synthetic/brain", "synthetic/boards"]
    assert set(config["data"]["holdout"]["ids"]) == set(names)
    report = json.loads(max((tmp_path / "eval").glob("step_*.json")).read_text())
    assert set(report["domains"]) == set(names)  # forgetting is measured on the old domains too


@pytest.fixture(scope="module")
def rgb_depth_parent(tiny_config, tiny_synthetic, tmp_path_factory) -> Path:
    """A parent run that never saw a gray modality (one step is enough to refuse against)."""
    out = tmp_path_factory.mktemp("rgb_depth")
    train(
        TrainOptions(data="synthetic@tiles+parts", out=out, eval_every=0, max_minutes=1e-6),
        tiny_config,
        tiny_synthetic,
        allow_random_prior=True,
    )
    return out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("synthetic@parts", "synthetic/parts already exists in the parent run"),
        ("synthetic@brain", "kind gray, unknown to the model"),
    ],
)
def test_bad_new_domains_fail_with_one_line(data, message, rgb_depth_parent, tmp_path, capsys) -> None:
    parent = rgb_depth_parent
    capsys.readouterr()
    argv = ["adapt", "--checkpoint", str(parent), "--data", data, "--out", str(tmp_path / "new")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_tuned_share_of_both_presets_is_under_a_tenth() -> None:
    paper = count_tuned(build_meta_model(preset("paper")))
    # Spec 9's table: leaders 9 x 65,536; conv_cond 3 x 1,246,720 + gates 9 x 8,224; conv_out_first.
    assert paper.groups == {
        "moe_leaders": 589_824,
        "condition_router": 3_740_160 + 74_016,
        "aggregation_conv": 1_379_840,
    }
    # Spec 10's trainable 194,811,660 without what this model never builds: layer4 and the unused heads.
    assert paper.total == 194_811_660 - 41_971_712 - 1_542
    lite = count_tuned(build_meta_model(preset("lite")))
    assert paper.share < 0.1 and lite.share < 0.1
