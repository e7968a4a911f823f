"""UniMMAD configuration: one frozen dataclass that says it all, plus the `paper` and `lite` presets.

Torch-free on purpose: the CLI lists presets and validates configs without importing torch.
Every number of the `paper` preset comes from ../shared/design/UNIMMAD_SPEC.md (section in brackets).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite0's TensorFlow-converted weights expect (255 x - 127) / 128 (see model.backbones).
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3

STEM_VARIANTS = ("head", "v1")
# Fusions that standardise every (modality, level) map by its domain's normal statistics (model.anomaly_map).
CALIBRATED_FUSIONS = ("calibrated_max", "calibrated_mean")
ANOMALY_FUSIONS = ("code", "paper", *CALIBRATED_FUSIONS)
LOSS_REDUCTIONS = ("per_sample", "head")
# "relu": the official head p = ReLU(GN(conv)), right for post-ReLU prior taps (WideResNet);
# "none": p = GN(conv), signed, needed when the prior's taps are signed (EfficientNet's linear bottlenecks).
PREDICTION_ACTIVATIONS = ("relu", "none")
GROUP_NORM_CANDIDATES = (32, 16, 8, 4, 2, 1)
# Input size must be a multiple of the compressed code's stride (encoder stride 16, two more halvings).
CODE_STRIDE = 32
# Spec 9: share of each old domain's training items replayed while `model adapt` learns new domains.
DEFAULT_REPLAY = 0.01


def group_norm_groups(channels: int) -> int:
    """GroupNorm group count the official code uses: the largest of 32,16,8,4,2,1 dividing `channels`."""
    return next(groups for groups in GROUP_NORM_CANDIDATES if channels % groups == 0)


@dataclass(frozen=True)
class UniMMADConfig:
    """Every architecture, loss, training and preprocessing number of one UniMMAD model."""

    preset: str = "paper"
    # Inputs [1.3, 2]
    image_size: int = 256
    max_modalities: int = 4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    depth_scale: float = 100.0
    # Trunks [3, 4.1]; weights: a file path or "package:NAME"; None = random (the prior then needs opt-in)
    prior_trunk: str = "wide_resnet50_2"
    encoder_trunk: str = "wide_resnet50_2"
    prior_weights: str | None = None
    encoder_weights: str | None = None
    # Stem [2]: "head" = 12-channel embedding + 3-conv stem, "v1" = 6-channel embedding + one conv
    stem: str = "head"
    stem_widths: tuple[int, int] = (24, 48)
    # FCM [4.3-4.6]
    fcm_width: int = 512
    fcm_branch_width: int = 170
    fcm_kernel_sizes: tuple[int, ...] = (1, 3, 5)
    code_channels: int = 2048
    decoder_planes: tuple[int, int, int] = (256, 128, 64)  # deep to shallow; block width 2x, output 4x
    decoder_blocks: tuple[int, int, int] = (3, 4, 6)
    # C-MoE [5]
    moe_width: int = 256
    base_experts: int = 8
    leaders: int = 32
    top_k: int = 2
    kernel_sizes: tuple[int, ...] = (1, 3, 5)
    prediction_activation: str = "relu"
    # Fewest channels per GroupNorm group inside the C-MoE (model.cmoe.moe_norm_groups): 8 is the official
    # GN(32, 256); a small moe_width under the official rule alone would get 1-2 (issue 11's routing fix).
    moe_min_group_channels: int = 8
    # Anomaly map [8.2]
    anomaly_fusion: str = "code"
    blur_kernel: int = 15
    blur_sigma: float = 4.0
    top_fraction: float = 1 / 1000
    # Losses [6]
    focal_gamma: float = 2.0
    z_loss_weight: float = 1e-4
    # The balance weight falls linearly from 1 to the floor over this share of the run's planned steps
    # (the official code anneals over a fixed 200 epochs, i.e. over the whole of its 200-epoch run).
    balance_anneal_fraction: float = 1.0
    balance_floor: float = 0.001
    loss_reduction: str = "per_sample"
    # Training [7.1]
    lr: float = 1e-3
    epochs: int = 200
    batch_size: int = 10
    # Linear warm-up over this share of the planned steps, then cosine to zero at the last planned step.
    warmup_fraction: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "stem": STEM_VARIANTS,
            "anomaly_fusion": ANOMALY_FUSIONS,
            "loss_reduction": LOSS_REDUCTIONS,
            "prediction_activation": PREDICTION_ACTIVATIONS,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"config {name}={getattr(self, name)!r} is not one of {', '.join(valid)}")
        if self.image_size <= 0 or self.image_size % CODE_STRIDE:
            raise ValueError(
                f"config image_size={self.image_size} must be a positive multiple of {CODE_STRIDE}"
            )
        if not 1 <= self.max_modalities <= 4:
            raise ValueError(f"config max_modalities={self.max_modalities} must be within 1..4")
        if not 1 <= self.top_k <= self.leaders:
            raise ValueError(f"config top_k={self.top_k} must be within 1..leaders ({self.leaders})")
        odd_kernels = self.kernel_sizes + self.fcm_kernel_sizes + (self.blur_kernel,)
        if any(size % 2 == 0 or size < 1 for size in odd_kernels):
            raise ValueError(f"config kernel sizes must be odd and positive, got {odd_kernels}")
        if not 0 < self.balance_anneal_fraction <= 1:
            raise ValueError(
                f"config balance_anneal_fraction={self.balance_anneal_fraction} must be within (0, 1]"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"config warmup_fraction={self.warmup_fraction} must be within [0, 1)")
        if self.moe_min_group_channels < 1:
            raise ValueError(f"config moe_min_group_channels={self.moe_min_group_channels} must be >= 1")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"config top_fraction={self.top_fraction} must be within (0, 1]")

    @property
    def top_pixels(self) -> int:
        """Pixels averaged into an image score: floor(S*S*top_fraction), at least 1 (65 at 256 px)."""
        return max(1, math.floor(self.image_size * self.image_size * self.top_fraction))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); `from_dict(to_dict())` round-trips exactly."""
        return {field.name: _json_safe(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniMMADConfig:
        """Rebuild a config; unknown keys are rejected so a typo never silently falls back to a default."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        values = {name: tuple(value) if isinstance(value, list) else value for name, value in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> UniMMADConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)


def _json_safe(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


PRESETS: dict[str, UniMMADConfig] = {
    # The official HEAD architecture with exactly the spec's numbers; the WideResNet50-2 ImageNet weights
    # are not shipped with the code, so both weights sources are supplied by the user (--prior-weights).
    "paper": UniMMADConfig(),
    # CPU-trainable in minutes on 2 cores. EfficientNet-Lite0 (weights inside the pip package) as prior
    # and encoder at 128 px; same C-MoE structure (8 bases, 32 leaders, top-2, k = 1/3/5) at a quarter of
    # the width (E = 64), an FCM of width 128 with a 256-channel code and one block per decoder stage.
    # These widths keep forward + backward of a batch of 8 single-modality samples well under a second.
    "lite": UniMMADConfig(
        preset="lite",
        image_size=128,
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        prior_trunk="efficientnet_lite0",
        encoder_trunk="efficientnet_lite0",
        prior_weights="package:efficientnet_lite0",
        encoder_weights="package:efficientnet_lite0",
        fcm_width=128,
        fcm_branch_width=42,
        code_channels=256,
        decoder_planes=(64, 32, 16),
        decoder_blocks=(1, 1, 1),
        moe_width=64,
        # Per-modality maps standardised by held-out normal statistics, fused by their maximum (issue 11).
        anomaly_fusion="calibrated_max",
        # Lite0's taps are signed linear bottlenecks: the head must be signed too (model.unimmad).
        prediction_activation="none",
        epochs=40,
        batch_size=8,
        # No warm-up: two same-budget pairs of runs (scripts/recipe_ablation.sh; the demo's 6 min) ended at
        # 0.34 vs 0.24 and 0.38 vs 0.22 loss with a 3 % warm-up, and the demo's model lost 16-26 image
        # AUROC points on every synthetic domain (README, "Training fixes one at a time").
        warmup_fraction=0.0,
        # Short runs: the balance loss holds the gates near uniform while it weighs ~1, so it is annealed
        # over the first 30 % of the steps and the gates can specialise for the rest of the run.
        balance_anneal_fraction=0.3,
    ),
}


def preset(name: str) -> UniMMADConfig:
    """The named preset; unknown names raise ValueError listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
