"""Session fixtures shared across packages: a tiny trained-format checkpoint and the bundle exported from it.

`tiny_checkpoint` is a random-init UniMMAD (lite trunks, every width shrunk, 64 px, the lite preset's
calibrated fusion) saved with model.checkpoint.save_model; `tiny_bundle` is that checkpoint exported by
the real exporter on a small synthetic data set (all four synthetic domains, 1 to 4 modalities). Both are
built once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from export.build import BundleOptions, build_bundle
from export.calibration import DEFAULT_ROUTING_MODE, ROUTING_MODES
from export.samples import select_domains
from model.calibration import RecordedHoldout
from model.checkpoint import load_checkpoint, save_model
from model.config import PRESETS, UniMMADConfig
from model.data import SyntheticConfig, SyntheticSource
from model.unimmad import UniMMAD

TINY_SIZE = 64
TINY_HOLDOUT = {"fraction": 0.25, "seed": 0}


def tiny_export_config() -> UniMMADConfig:
    """Lite trunks with random weights, C-MoE structure kept (3 bases, 6 leaders, top-2, k = 1/3/5) at E = 8."""
    return PRESETS["lite"].replace(
        preset="tiny",
        image_size=TINY_SIZE,
        prior_weights=None,
        encoder_weights=None,
        stem_widths=(4, 8),
        fcm_width=16,
        fcm_branch_width=5,
        code_channels=32,
        decoder_planes=(8, 4, 2),
        decoder_blocks=(1, 1, 1),
        moe_width=8,
        base_experts=3,
        leaders=6,
    )


@pytest.fixture(scope="session")
def tiny_config() -> UniMMADConfig:
    """`tiny_export_config()` as a fixture; test folders that need other sizes override it from this one."""
    return tiny_export_config()


def tiny_synthetic_source() -> SyntheticSource:
    """The synthetic domains at 64 px with a few samples each: 8 normal train, 3 + 3 test."""
    sizes = SyntheticConfig(
        size=TINY_SIZE, train_per_domain=8, test_normal_per_domain=3, test_defective_per_domain=3
    )
    return SyntheticSource("synthetic", sizes)


def tiny_bundle_options(**changes) -> BundleOptions:
    """The export options of the tiny bundles: the checkpoint's holdout, batches of 4."""
    return BundleOptions(holdout=RecordedHoldout(**TINY_HOLDOUT), batch_size=4, **changes)


@pytest.fixture(scope="session")
def tiny_export_setup() -> tuple[SyntheticSource, BundleOptions]:
    """The data source and export options the tiny bundles were built from."""
    return tiny_synthetic_source(), tiny_bundle_options()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/tiny: config.json + model.safetensors of a random-init tiny model (random prior saved with it)."""
    torch.manual_seed(0)
    model = UniMMAD(tiny_export_config(), allow_random_prior=True)
    run_config = {"data": {"spec": "synthetic", "holdout": TINY_HOLDOUT}}
    return save_model(tmp_path_factory.mktemp("runs") / "tiny", model, run_config)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from `tiny_checkpoint` by export.build (frozen + dynamic graphs, four domains)."""
    model, _ = load_checkpoint(tiny_checkpoint)
    domains = select_domains([tiny_synthetic_source()], None)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_bundle(model, domains, out, tiny_bundle_options())
    return out


# The pair bundle: two domains sharing rgb + depth, and the boards' rgb + depth calibrated as a subset.
PAIR_DOMAINS = ("synthetic/parts", "synthetic/boards")
SUBSETS = (("synthetic/boards", ("rgb", "depth")),)


@pytest.fixture(scope="session")
def pair_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_checkpoint` exported for parts and boards with the routing mode `tiny_bundle` does not use and
    the subset boards:rgb+depth (graph index 2). One export serves the routing-mode, subset and add-domain
    tests, because each tiny export costs minutes of the suite."""
    model, _ = load_checkpoint(tiny_checkpoint)
    domains = select_domains([tiny_synthetic_source()], list(PAIR_DOMAINS))
    mode = next(mode for mode in ROUTING_MODES if mode != DEFAULT_ROUTING_MODE)
    out = tmp_path_factory.mktemp("bundles") / f"tiny_pair_{mode}"
    build_bundle(model, domains, out, tiny_bundle_options(routing=mode, subsets=SUBSETS))
    return out


@pytest.fixture(scope="session")
def tiny_export_model() -> UniMMAD:
    """A random-init model of the same tiny config, in eval mode (for torch-only export tests)."""
    torch.manual_seed(0)
    return UniMMAD(tiny_export_config(), allow_random_prior=True).eval()


def _adapted_checkpoint(parent: Path, out: Path, also: str | None = None) -> Path:
    """`parent`'s weights with the groups `model adapt` tunes moved (as an adaptation would), plus the
    parameter named `also` when given (a weight adapt must not touch)."""
    from model.adapt import select_tuned

    model, run_config = load_checkpoint(parent)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in select_tuned(model):
            parameter.add_(0.05 * torch.randn_like(parameter))
        if also is not None:
            model.get_parameter(also).add_(0.05)
    return save_model(out, model, run_config)


@pytest.fixture(scope="session")
def make_adapted_checkpoint() -> Callable[..., Path]:
    """`_adapted_checkpoint(parent, out, also=None)`, for tests that need their own adapted run."""
    return _adapted_checkpoint


@pytest.fixture(scope="session")
def extended_bundle(
    pair_bundle: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`pair_bundle` (parts, boards, boards:rgb+depth) with synthetic/tiles appended by export add-domain."""
    from export.add_domain import add_domain

    checkpoint = _adapted_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("runs") / "adapted")
    out = tmp_path_factory.mktemp("bundles") / "extended"
    add_domain(
        pair_bundle,
        checkpoint,
        "synthetic/tiles",
        out,
        batch_size=4,
        synthetic=tiny_synthetic_source().config,
    )
    return out
