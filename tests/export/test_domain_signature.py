"""Domain signatures and calibrated modality subsets in exported bundles.

The signature comes from the frozen prior alone, so every graph outputs the same one whatever `domain`
says; the bounds in the manifest are the bundle.domain_match rule applied to what the signature graph
computes; a subset gets its own graph index, calibrated on its own modalities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bundle.domain_match import ood_bound, signature_distance
from bundle.loader import SIGNATURE_GRAPH, load_bundle
from export.__main__ import main
from export.build import parse_subset, subset_data, threshold_normals
from export.samples import batches, select_domains
from export.signature import SignatureNet
from model.calibration import quantile_threshold
from model.checkpoint import load_checkpoint

PARITY = 1e-4


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_graph_outputs_the_prior_signature_whatever_the_domain(
    tiny_bundle: Path, tiny_checkpoint: Path
) -> None:
    loaded = load_bundle(tiny_bundle)
    model, _ = load_checkpoint(tiny_checkpoint)
    images = torch.randn(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = SignatureNet(model.eval())(images).numpy()
    assert want.shape == (2, 2, loaded.manifest.signature.features)
    signature_graph = _session(loaded.graph(SIGNATURE_GRAPH).model)
    np.testing.assert_allclose(
        signature_graph.run(["signature"], {"images": images.numpy()})[0], want, atol=PARITY
    )
    for kind in ("frozen", "dynamic"):
        session = _session(loaded.graph(kind).model)
        for spec in loaded.manifest.domains.values():
            feeds = {"images": images.numpy(), "domain": np.array([spec.index])}
            np.testing.assert_allclose(session.run(["signature"], feeds)[0], want, atol=PARITY)


def test_each_bound_is_the_rule_on_the_signature_graphs_held_out_normals(
    tiny_bundle: Path, tiny_export_setup, tiny_checkpoint: Path
) -> None:
    source, options = tiny_export_setup
    loaded = load_bundle(tiny_bundle)
    model, _ = load_checkpoint(tiny_checkpoint)
    session = _session(loaded.graph(SIGNATURE_GRAPH).model)
    for data in select_domains([source], list(loaded.manifest.domains)):
        spec = loaded.manifest.domains[data.name]
        refs, split = threshold_normals(data, options)
        signatures = np.concatenate(
            [
                session.run(["signature"], {"images": batch.images.numpy()})[0]
                for batch in batches(data, refs, model.config, options.batch_size)
            ]
        )
        distances = signature_distance(signatures, *spec.signature.statistics(spec.modality_names))
        assert spec.signature.bound_split == split and spec.signature.bound_images == len(refs)
        assert spec.signature.bound == pytest.approx(ood_bound(distances), rel=1e-3)


def test_a_subset_is_calibrated_on_its_own_modalities_and_index(
    pair_bundle: Path, tiny_export_setup, tiny_checkpoint: Path
) -> None:
    source, options = tiny_export_setup
    manifest = load_bundle(pair_bundle).manifest
    boards = manifest.domains["synthetic/boards"]
    assert manifest.domains["synthetic/parts"].subsets == {}
    subset = boards.subsets["rgb+depth"]
    assert (subset.index, subset.modalities) == (2, ["rgb", "depth"])
    assert set(subset.normal_statistics.modalities) == {"rgb", "depth"}
    assert 0 < subset.signature_bound
    model, _ = load_checkpoint(tiny_checkpoint)
    data = subset_data(select_domains([source], ["synthetic/boards"]), "synthetic/boards", ("depth", "rgb"))
    refs, _ = threshold_normals(data, options)
    frozen = _session(load_bundle(pair_bundle).graph("frozen").model)
    scores = np.concatenate(
        [
            frozen.run(["image_score"], {"images": batch.images.numpy(), "domain": np.array([subset.index])})[
                0
            ]
            for batch in batches(data, refs, model.config, options.batch_size)
        ]
    )
    assert subset.threshold == pytest.approx(
        quantile_threshold(scores, subset.threshold_method.target_fpr), rel=1e-5
    )


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("mulsen_derived/capsule:rgb+infrared", ("mulsen_derived/capsule", ("rgb", "infrared"))),
        ("synthetic/parts:rgb", ("synthetic/parts", ("rgb",))),
    ],
)
def test_parse_subset(text: str, parsed: tuple) -> None:
    assert parse_subset(text) == parsed


@pytest.mark.parametrize("text", ["synthetic/parts", ":rgb", "synthetic/parts:rgb+", "synthetic/parts:"])
def test_a_malformed_subset_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="DOMAIN:MODALITY"):
        parse_subset(text)


@pytest.mark.parametrize(
    ("domain", "names", "message"),
    [
        ("synthetic/nope", ("rgb",), "unknown domain"),
        ("synthetic/boards", ("rgb", "thermal"), "fewer than all"),
        ("synthetic/boards", ("rgb", "infrared", "depth"), "fewer than all"),
        ("synthetic/boards", ("rgb", "rgb"), "without repeats"),
    ],
)
def test_a_subset_must_be_a_proper_subset_of_a_known_domain(
    tiny_export_setup, domain: str, names: tuple, message: str
) -> None:
    source, _ = tiny_export_setup
    with pytest.raises(ValueError, match=message):
        subset_data(select_domains([source], None), domain, names)


def test_the_cli_refuses_a_bad_subset_in_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bundle", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "b")]
    assert main([*argv, "--data", "synthetic", "--subsets", "synthetic/tiles:rgb"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: subset rgb of synthetic/tiles must name fewer than all")
    assert not (tmp_path / "b" / "manifest.json").exists()
