"""UniMMAD: the full network (spec section 0), from modality images to per-level predictions and priors.

    images [B,M,3,S,S] --(slot-major pairs)--> frozen prior trunk --> u_l [N,C_l,h_l,w_l] (unit norm)
    images --shared tensor--> InputStem --> encoder trunk --> FCM --> f_l [B,C_l,h_l,w_l] (unit norm)
    per level l: CMoE_l(f_l[pair_sample], u_l) --> p_l [N,C_l,h_l,w_l]

Pairs are packed slot-major (all slot-0 pairs, then slot-1, ...), spec 5.1; pair_sample/pair_slot say
which (sample, slot) each of the N pairs is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones import build_trunk
from model.backbones.weights import WeightsInfo, load_trunk_weights
from model.cmoe import DEFAULT_KERNEL_MODE, CMoE, ForcedRoute, GateOutput
from model.config import IMAGENET_MEAN, IMAGENET_STD, UniMMADConfig
from model.fcm import FCM
from model.stem import InputStem, shared_input

logger = logging.getLogger(__name__)

LEVELS = 3
EXPECTED_STRIDES = (4, 8, 16)
NORMALISATION_TOLERANCE = 1e-6

Routing = Sequence[Sequence[ForcedRoute]]
"""Forced routing: routing[level][branch] = ForcedRoute(idx [N,K], scores [N,K])."""


class UniMMADOutput(NamedTuple):
    """What one forward returns (a pytree, so torch.export can trace it).

    priors[l] / predictions[l]: [N, C_l, h_l, w_l] (priors unit-norm, predictions not normalised);
    pair_sample / pair_slot: [N] int64; modality_present: [B, M] bool; routes[l][branch]: GateOutput;
    balance_loss: scalar, mean over levels of the per-level sum over branches of CV^2 + z-loss
    (not annealed; zero under forced routing).
    """

    priors: list[Tensor]
    predictions: list[Tensor]
    pair_sample: Tensor
    pair_slot: Tensor
    modality_present: Tensor
    routes: list[list[GateOutput]]
    balance_loss: Tensor


class UniMMAD(nn.Module):
    """UniMMAD built from a config. Submodules: prior (frozen), stem, encoder, fcm, c_moes.

    The prior trunk is loaded from `config.prior_weights`; without one the constructor refuses unless
    `allow_random_prior=True` (tests, profiling). The encoder starts from `config.encoder_weights`
    (random with a warning when None). The prior never trains: its parameters have requires_grad=False,
    `.train()` keeps it in eval mode, and `trainable_parameters()` is what the optimiser should get.
    """

    def __init__(self, config: UniMMADConfig, allow_random_prior: bool = False) -> None:
        super().__init__()
        self.config = config
        self.prior = build_trunk(config.prior_trunk)
        self.encoder = build_trunk(config.encoder_trunk)
        check_trunks(config, self.prior, self.encoder)
        self.prior_weights_info = self._load_prior(allow_random_prior)
        self.encoder_weights_info = self._load_encoder()
        self.prior.requires_grad_(False)
        self.prior.eval()
        prior_channels = self.prior.feature_spec.channels
        self.stem = InputStem(config.image_size, config.stem, config.stem_widths)
        self.fcm = FCM(
            self.encoder.feature_spec.channels,
            prior_channels,
            width=config.fcm_width,
            branch_width=config.fcm_branch_width,
            kernel_sizes=config.fcm_kernel_sizes,
            code_channels=config.code_channels,
            decoder_planes=config.decoder_planes,
            decoder_blocks=config.decoder_blocks,
        )
        self.c_moes = nn.ModuleList(
            CMoE(
                channels,
                width=config.moe_width,
                base_experts=config.base_experts,
                leaders=config.leaders,
                top_k=config.top_k,
                kernel_sizes=config.kernel_sizes,
                z_loss_weight=config.z_loss_weight,
                signed_prediction=config.prediction_activation == "none",
                min_group_channels=config.moe_min_group_channels,
            )
            for channels in prior_channels
        )

    def _load_prior(self, allow_random_prior: bool) -> WeightsInfo | None:
        if self.config.prior_weights is not None:
            return load_trunk_weights(self.prior, self.config.prior_weights)
        if not allow_random_prior:
            hint = getattr(
                self.prior, "weights_hint", "pass an ImageNet state dict with --prior-weights PATH"
            )
            raise ValueError(
                f"the {self.config.preset} preset needs ImageNet weights for its frozen prior: {hint}"
            )
        if not is_meta(self.prior):
            logger.warning("prior trunk %s has random weights (allow_random_prior)", self.config.prior_trunk)
        return None

    def _load_encoder(self) -> WeightsInfo | None:
        if self.config.encoder_weights is not None:
            return load_trunk_weights(self.encoder, self.config.encoder_weights)
        if not is_meta(self.encoder):
            logger.warning("encoder trunk %s starts from random weights", self.config.encoder_trunk)
        return None

    def train(self, mode: bool = True) -> UniMMAD:
        """Switch the trainable parts; the frozen prior stays in eval mode (BN running statistics)."""
        super().train(mode)
        self.prior.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser gets: everything but the frozen prior."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def state_dict_without_prior(self) -> dict[str, Tensor]:
        """Trainable weights and buffers; the prior is rebuilt from its weights file instead."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("prior.")}

    @torch.no_grad()
    def prior_features(self, specific: Tensor) -> list[Tensor]:
        """The frozen prior on modality images [N,3,S,S] -> per level unit-norm [N,C_l,h_l,w_l]."""
        return [F.normalize(level, dim=1) for level in self.prior(specific)]

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless images is [B, M, 3, S, S] with S = image_size and 1 <= M <= max_modalities."""
        size = self.config.image_size
        if images.dim() != 5:
            raise ValueError(f"images must be [B, M, 3, {size}, {size}], got rank {images.dim()}")
        if images.shape[2] != 3:
            raise ValueError(f"every modality image must have 3 channels, got {images.shape[2]}")
        if images.shape[3] != size or images.shape[4] != size:
            raise ValueError(
                f"images must be {size}x{size} (config image_size), got {images.shape[3]}x{images.shape[4]}"
            )
        if not 1 <= images.shape[1] <= self.config.max_modalities:
            raise ValueError(
                f"images hold {images.shape[1]} modality slots; 1..{self.config.max_modalities} allowed"
            )

    def forward(
        self,
        images: Tensor,
        modality_count: Tensor | None = None,
        routing: Routing | None = None,
        kernel_mode: str = DEFAULT_KERNEL_MODE,
        priors: Sequence[Tensor] | None = None,
    ) -> UniMMADOutput:
        """images [B,M,3,S,S]; modality_count int64 [B] in 1..M (None: every slot present, a pure tensor
        program for export); routing[level][branch] forces leaders instead of the gates; priors: the
        frozen prior's features of the N pairs in slot-major order, precomputed (e.g. model.prior_cache)."""
        self.check_images(images)
        batch, slots = images.shape[:2]
        by_slot = images.transpose(0, 1).reshape(slots * batch, *images.shape[2:])
        if modality_count is None:
            # Broadcasts instead of index arithmetic: the ONNX exporter cannot lower % by a symbolic size.
            present = torch.ones(batch, slots, dtype=torch.bool, device=images.device)
            pair_sample = torch.arange(batch, device=images.device)[None, :].expand(slots, batch).reshape(-1)
            pair_slot = torch.arange(slots, device=images.device)[:, None].expand(slots, batch).reshape(-1)
            specific = by_slot
        else:
            present = presence_mask(modality_count, batch, slots)
            images = images * present[:, :, None, None, None]
            pair_index = present.t().reshape(-1).nonzero().squeeze(1)
            pair_slot = pair_index // batch
            pair_sample = pair_index % batch
            specific = by_slot.index_select(0, pair_index)
        if routing is not None and len(routing) != LEVELS:
            raise ValueError(f"routing needs one entry per level ({LEVELS}), got {len(routing)}")

        if priors is None:
            priors = self.prior_features(specific)
        elif len(priors) != LEVELS or any(level.shape[0] != pair_sample.shape[0] for level in priors):
            raise ValueError(f"priors must hold {LEVELS} levels of {pair_sample.shape[0]} pairs each")
        general = self.fcm(self.encoder(self.stem(shared_input(images, self.config.stem))))

        predictions, routes, balance = [], [], []
        for level, cmoe in enumerate(self.c_moes):
            level_routing = None if routing is None else routing[level]
            out = cmoe(general[level].index_select(0, pair_sample), priors[level], level_routing, kernel_mode)
            predictions.append(out.prediction)
            routes.append(out.routes)
            balance.append(out.balance_loss)
        return UniMMADOutput(
            list(priors), predictions, pair_sample, pair_slot, present, routes, torch.stack(balance).mean()
        )


def is_meta(module: nn.Module) -> bool:
    """A meta-device module holds no values at all (structure-only builds, e.g. complexity counts)."""
    return any(parameter.is_meta for parameter in module.parameters())


def presence_mask(modality_count: Tensor, batch: int, slots: int) -> Tensor:
    """[B] counts in 1..slots -> [B, slots] bool, True where the slot holds a modality."""
    if modality_count.shape != (batch,) or modality_count.dtype.is_floating_point:
        raise ValueError(
            f"modality_count must be an integer tensor of shape [{batch}], got {modality_count.dtype} "
            f"{list(modality_count.shape)}"
        )
    if bool(((modality_count < 1) | (modality_count > slots)).any()):
        raise ValueError(f"modality_count values must be within 1..{slots}, got {modality_count.tolist()}")
    return torch.arange(slots, device=modality_count.device)[None, :] < modality_count[:, None]


def check_target_reachable(config: UniMMADConfig, prior_signed: bool) -> None:
    """The prediction must be able to point where the prior points: cos(u, p) can only reach 1 when p's
    output space contains u. A ReLU'd prediction cannot represent a signed prior (the best reachable
    1 - cos is then a content-dependent floor, not zero), so that pairing is refused."""
    if prior_signed and config.prediction_activation == "relu":
        raise ValueError(
            f"the {config.prior_trunk} prior's features are signed but prediction_activation='relu' makes "
            "every prediction non-negative, so the training target is unreachable; use "
            "prediction_activation='none'"
        )


def check_trunks(config: UniMMADConfig, prior: nn.Module, encoder: nn.Module) -> None:
    """Both trunks must tap strides 4/8/16, and the input normalisation must be the one the prior expects."""
    for role, trunk in (("prior", prior), ("encoder", encoder)):
        if tuple(trunk.feature_spec.strides) != EXPECTED_STRIDES:
            raise ValueError(f"{role} trunk strides {trunk.feature_spec.strides} must be {EXPECTED_STRIDES}")
    check_target_reachable(config, prior.feature_spec.signed)
    expected_mean = getattr(prior, "input_mean", IMAGENET_MEAN)
    expected_std = getattr(prior, "input_std", IMAGENET_STD)
    mismatch = any(
        abs(got - want) > NORMALISATION_TOLERANCE
        for got, want in zip(config.mean + config.std, tuple(expected_mean) + tuple(expected_std))
    )
    if mismatch:
        raise ValueError(
            f"config mean/std {config.mean}/{config.std} differ from what the {config.prior_trunk} prior "
            f"expects ({tuple(expected_mean)}/{tuple(expected_std)})"
        )
