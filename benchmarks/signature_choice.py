"""Which features identify a sample's domain best: the pooled frozen prior (the bundle's signature) or the
pooled general features the C-MoE conditions on.

    python benchmarks/signature_choice.py --checkpoint runs/unified --per-domain 24 \
        --out docs/results/signature_choice_unified.json

For every domain of the checkpoint's data, `--per-domain` normal training images fit each candidate's
statistics (bundle.domain_match) and as many test images (normal and defective, drawn at random) are
assigned to the nearest domain among those with the same modalities. The prior is per modality, the
general features are one vector per sample (the encoder sees every modality at once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.domain_match import fit_signature_statistics, signature_distance
from export.samples import DomainData, batches, select_domains
from export.signature import SignatureNet
from model.checkpoint import load_checkpoint
from model.data import parse_data_spec
from model.stem import shared_input
from model.unimmad import UniMMAD

CANDIDATES = ("prior", "general")


@torch.no_grad()
def general_signature(model: UniMMAD, images: torch.Tensor) -> np.ndarray:
    """Spatial mean of each unit-norm general feature level, concatenated: [B, 1, F] (one 'modality')."""
    levels = model.fcm(model.encoder(model.stem(shared_input(images, model.config.stem))))
    pooled = torch.cat([nn.functional.normalize(level, dim=1).mean(dim=(2, 3)) for level in levels], dim=1)
    return pooled[:, None].numpy()


@torch.no_grad()
def signatures(model: UniMMAD, data: DomainData, refs: list) -> dict[str, np.ndarray]:
    """Both candidates' signatures of `refs`."""
    prior = SignatureNet(model).eval()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in CANDIDATES}
    for batch in batches(data, refs, model.config, 8):
        parts["prior"].append(prior(batch.images).numpy())
        parts["general"].append(general_signature(model, batch.images))
    return {name: np.concatenate(values) for name, values in parts.items()}


def sample(refs: list, count: int, rng: np.random.Generator) -> list:
    return [refs[i] for i in sorted(rng.choice(len(refs), min(count, len(refs)), replace=False))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--per-domain", type=int, default=24, help="training and test images per domain")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, run_config = load_checkpoint(args.checkpoint)
    model.eval()
    domains = select_domains(parse_data_spec(run_config["data"]["spec"]), None)
    rng = np.random.default_rng(0)
    fitted, tested = {}, {}
    for data in domains:
        train = sample(data.normal_train_refs(), args.per_domain, rng)
        fitted[data.name] = {
            k: fit_signature_statistics(v) for k, v in signatures(model, data, train).items()
        }
        tested[data.name] = signatures(model, data, sample(data.test_refs(), args.per_domain, rng))
    names = {data.name: data.domain.modality_names for data in domains}
    report = {}
    for candidate in CANDIDATES:
        correct, total, confused = 0, 0, {}
        for name, test in tested.items():
            rivals = [other for other in names if names[other] == names[name]]
            distances = np.stack([signature_distance(test[candidate], *fitted[o][candidate]) for o in rivals])
            predicted = [rivals[i] for i in distances.argmin(axis=0)]
            correct += sum(p == name for p in predicted)
            total += len(predicted)
            for p in predicted:
                if p != name:
                    confused[f"{name} -> {p}"] = confused.get(f"{name} -> {p}", 0) + 1
        report[candidate] = {"accuracy": correct / total, "samples": total, "confused": confused}
    report["per_domain"] = args.per_domain
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
