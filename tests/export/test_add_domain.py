"""`export add-domain`: a new bundle with one more domain, the old domains' graph rows and answers unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bundle.loader import load_bundle
from export.__main__ import main
from export.add_domain import AddDomainError, add_domain
from model.data import SyntheticConfig

NEW = "synthetic/tiles"  # pair_bundle holds parts and boards
TINY = SyntheticConfig(size=64, train_per_domain=8, test_normal_per_domain=3, test_defective_per_domain=3)


def frozen_outputs(bundle: Path, index: int, slots: int) -> list[np.ndarray]:
    manifest = load_bundle(bundle).manifest
    session = ort.InferenceSession(
        str(bundle / manifest.graphs.frozen.file), providers=["CPUExecutionProvider"]
    )
    images = np.random.default_rng(7).standard_normal((3, slots, 3, 64, 64)).astype(np.float32)
    return session.run(None, {"images": images, "domain": np.array([index], dtype=np.int64)})


def test_the_new_bundle_serves_the_new_domain_and_the_old_ones_unchanged(
    extended_bundle, pair_bundle
) -> None:
    out = extended_bundle
    # The old bundle is never modified: it still loads (every file's sha256 checked) with its two domains.
    old, new = load_bundle(pair_bundle).manifest, load_bundle(out).manifest
    assert list(old.domains) == ["synthetic/parts", "synthetic/boards"]
    old_sets = dict(old.served_sets())
    assert list(old_sets) == ["synthetic/parts", "synthetic/boards", "synthetic/boards:rgb+depth"]
    # The new domain's rows come after every old set's, the subset's included.
    assert list(new.domains) == [*old.domains, NEW] and new.domains[NEW].index == len(old_sets)
    assert new.model_version != old.model_version and new.lineage.domains_added == [NEW]
    assert new.graphs.dynamic == old.graphs.dynamic
    new_sets = dict(new.served_sets())
    for name, spec in old_sets.items():
        kept = new_sets[name]
        exclude = {"rows_sha256", "subsets"}
        assert kept.model_dump(exclude=exclude) == spec.model_dump(exclude=exclude)
        assert kept.rows_sha256 is not None
        for before_output, after_output in zip(
            frozen_outputs(pair_bundle, spec.index, len(spec.modalities)),
            frozen_outputs(out, spec.index, len(spec.modalities)),
        ):
            assert before_output.tobytes() == after_output.tobytes()
    scores = frozen_outputs(out, new.domains[NEW].index, 1)[2]
    assert np.isfinite(scores).all()


def test_an_extended_bundle_can_be_extended_again(
    extended_bundle, tiny_checkpoint, make_adapted_checkpoint, tmp_path
) -> None:
    out = extended_bundle
    checkpoint = make_adapted_checkpoint(tiny_checkpoint, tmp_path / "adapted")
    twice = add_domain(out, checkpoint, "synthetic/brain", tmp_path / "twice", batch_size=4, synthetic=TINY)
    assert twice.lineage.parent_lineage is not None and len(twice.domains) == 4


@pytest.mark.parametrize(
    ("domain", "also", "message"),
    [
        ("synthetic/parts", None, "synthetic/parts already exists in the bundle"),
        (NEW, "c_moes.0.conv_share.0.weight", "adapt changed weights every domain shares"),
        (NEW, "encoder._conv_stem.weight", "adapt changed weights every domain shares"),
        (NEW, "prior._conv_stem.weight", "the bundle comes from another model"),
    ],
)
def test_refusals_leave_nothing_behind(
    domain, also, message, pair_bundle, tiny_checkpoint, make_adapted_checkpoint, tmp_path
) -> None:
    checkpoint = make_adapted_checkpoint(tiny_checkpoint, tmp_path / "adapted", also)
    with pytest.raises(AddDomainError, match=message):
        add_domain(pair_bundle, checkpoint, domain, tmp_path / "new", batch_size=4, synthetic=TINY)
    assert not (tmp_path / "new").exists()


def test_cli_refuses_an_existing_output_folder(pair_bundle, tiny_checkpoint, capsys) -> None:
    argv = ["add-domain", str(pair_bundle), "--checkpoint", str(tiny_checkpoint), "--domain", NEW]
    assert main([*argv, "--out", str(pair_bundle)]) == 1
    err = capsys.readouterr().err.strip()
    assert "never modifies one" in err and len(err.splitlines()) == 1


def test_verify_refuses_an_added_domain_in_one_line(extended_bundle, tiny_checkpoint, capsys) -> None:
    """The per-sample graph of an extended bundle is its parent's model: there is nothing to compare the
    added domain's frozen routing with, so verify says so instead of failing inside onnxruntime."""
    argv = ["verify", str(extended_bundle), "--checkpoint", str(tiny_checkpoint), "--data", "synthetic"]
    assert main([*argv, "--domains", NEW, "--max-samples", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "appended by `export add-domain`" in err and len(err.splitlines()) == 1
