"""Domain inference, out-of-distribution rejection and subset scoring of a bundle, measured the way the
service runs them: onnxruntime, the service's candidate sets and matching rule, no torch.

    python scripts/domain_ood_eval.py --bundle bundles/unified_v3 \
        --out docs/results/domain_ood_unified_v3.json --results-md docs/RESULTS.md

- Domain identification: every test sample (normal and defective) of every domain of --data, matched
  without its domain among the domains taking the same modalities: accuracy per domain, confusion pairs.
- False rejects: the share of those known-domain test samples whose best fit is beyond its bound.
- Out-of-distribution inputs, each matched among the sets taking its modalities: the held-out datasets of
  --ood-data (never trained on), generated noise and blank frames for every modality set of the bundle,
  and images of one modality sent as another (infrared, depth and MRI images sent as `rgb`, rgb as `gray`).
  Rejection rate: the share beyond every candidate's bound, or refused as invalid input (a 4xx).
- Subset scoring: image AUROC on the test split of every domain with calibrated subsets, full set and each
  subset, from the frozen graph with the set's index (the service's path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.domain_match import BOUND_RULE
from bundle.loader import SIGNATURE_GRAPH, BundleError, load_bundle
from bundle.manifest import Manifest
from modalities.decode import decode_bytes
from modalities.errors import ModalityError
from model.data import parse_data_spec
from model.data.registry import shared_data_root
from model.metrics import auroc
from service.domain_match import DomainMatch, best_match, by_name, candidates, served_sets
from service.errors import ServiceError
from service.pipeline import prepared_per_set
from service.preprocessing import prepare_sample

TRAINED_DATA = "synthetic,shared:magnetic_tile,shared:mvtec3d_tire,shared:mulsen:button_cell+capsule"
HELD_OUT_DATA = "mvtec:{shared}/mvtec_ad,mulsen_derived:{shared}/mulsen_ad_derived@flat_pad"
GENERATED_SIDE = 256
RESULTS_HEADING = "## Domain inference, out-of-distribution and missing sensors"
# The section sits between these markers in --results-md, so other sections survive a rerun.
START_MARK = "<!-- domain-ood:start (scripts/domain_ood_eval.py) -->"
END_MARK = "<!-- domain-ood:end -->"
# (field the image is sent as, what the image really is): one modality's images sent as another.
SWAPS = (("rgb", "infrared"), ("rgb", "depth"), ("rgb", "flair"), ("gray", "rgb"))


class Matcher:
    """The service's domain choice on one machine: candidate sets, preparation, signature graph."""

    def __init__(self, bundle_path: Path) -> None:
        bundle = load_bundle(bundle_path)
        if bundle.manifest.signature is None:
            raise BundleError(f"{bundle_path} has no domain statistics (format 2): re-export it")
        self.manifest: Manifest = bundle.manifest
        self.sets = served_sets(self.manifest)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.signature = ort.InferenceSession(str(bundle.graph(SIGNATURE_GRAPH).model), options, providers)
        self.frozen = ort.InferenceSession(str(bundle.graph("frozen").model), options, providers)

    def match(self, arrays: dict[str, np.ndarray]) -> DomainMatch | None:
        """The best-fitting whole domain for these modality arrays; None when no domain takes them or their
        preparation fails (the service answers both with a 4xx)."""
        sets = candidates(self.sets, frozenset(arrays), allow_subsets=False)
        if not sets:
            return None
        try:
            samples, row_of = prepared_per_set(arrays, sets, self.manifest)
        except ServiceError:
            return None
        signatures = self.signature.run(["signature"], {"images": samples})[0]
        return best_match({s.key: by_name(signatures[row_of[s.key]], s) for s in sets}, sets)

    def image_scores(self, key: str, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Frozen-graph image scores of the served set `key` (a domain or 'domain:subset')."""
        spec = self.sets[key].spec
        scores = []
        for start in range(0, len(samples), 8):
            chunk = [prepare_sample(s, spec, self.manifest) for s in samples[start : start + 8]]
            feeds = {"images": np.stack(chunk), "domain": np.array([spec.index], dtype=np.int64)}
            scores.append(self.frozen.run(["image_score"], feeds)[0])
        return np.concatenate(scores)


def rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def known_domains(matcher: Matcher, data_spec: str, limit: int | None) -> dict:
    """Domain identification and false rejects on every test sample of the trained domains."""
    confusion: dict[str, Counter] = defaultdict(Counter)
    rejects: dict[str, Counter] = defaultdict(Counter)
    counts: dict[str, Counter] = defaultdict(Counter)
    for source in parse_data_spec(data_spec):
        for domain in source.domains():
            if domain.name not in matcher.manifest.domains:
                continue
            for ref in source.refs("test", domain.name)[:limit]:
                sample = source.load(ref)
                # Blank depth (a MulSen rendering artifact no normal sample has) is counted apart too.
                kinds = ["defective" if sample.label else "normal"]
                kinds += ["blank_depth"] if sample.meta.get("blank_depth") else []
                match = matcher.match(dict(sample.modalities))
                predicted = "(refused)" if match is None else match.scored.served.domain
                confusion[domain.name][predicted] += 1
                for kind in kinds:
                    counts[domain.name][kind] += 1
                    rejects[domain.name][kind] += match is None or match.scored.ratio > 1
    per_domain = {}
    for name, seen in counts.items():
        total = seen["normal"] + seen["defective"]
        per_domain[name] = {
            "samples": total,
            "correct": confusion[name][name],
            "accuracy": rate(confusion[name][name], total),
            "false_reject": {
                kind: {
                    "n": seen[kind],
                    "rejected": rejects[name][kind],
                    "rate": rate(rejects[name][kind], seen[kind]),
                }
                for kind in ("normal", "defective", "blank_depth")
            },
        }
    total = sum(entry["samples"] for entry in per_domain.values())
    correct = sum(entry["correct"] for entry in per_domain.values())
    overall_rejects = {
        kind: rate(
            sum(e["false_reject"][kind]["rejected"] for e in per_domain.values()),
            sum(e["false_reject"][kind]["n"] for e in per_domain.values()),
        )
        for kind in ("normal", "defective")
    }
    return {
        "per_domain": per_domain,
        "accuracy": rate(correct, total),
        "samples": total,
        "confusion": {name: dict(row) for name, row in confusion.items()},
        "false_reject_rate": overall_rejects,
    }


def held_out_inputs(ood_spec: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Every sample (train and test) of the held-out datasets, as (source name, arrays)."""
    for source in parse_data_spec(ood_spec):
        for domain in source.domains():
            for split in ("train", "test"):
                for ref in source.refs(split, domain.name):
                    yield f"held-out dataset {domain.name}", dict(source.load(ref).modalities)


def generated_array(kind: str, rng: np.random.Generator, blank: float | None) -> np.ndarray:
    """A noise image (blank None) or a constant frame at `blank` in [0, 1] of one modality kind."""
    side = GENERATED_SIDE
    if kind == "depth":
        return (
            np.full((side, side), blank, np.float32)
            if blank is not None
            else rng.random((side, side), np.float32)
        )
    shape = (side, side, 3) if kind == "rgb" else (side, side)
    if blank is not None:
        return np.full(shape, round(blank * 255), np.uint8)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def generated_inputs(
    manifest: Manifest, count: int, seed: int
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Per modality set of the bundle: `count` noise samples and black, mid-grey and white frames."""
    rng = np.random.default_rng(seed)
    modality_sets = {tuple((m.name, m.kind) for m in spec.modalities) for spec in manifest.domains.values()}
    for modalities in sorted(modality_sets):
        label = "+".join(name for name, _ in modalities)
        for _ in range(count):
            yield f"noise ({label})", {name: generated_array(kind, rng, None) for name, kind in modalities}
        for level in (0.0, 0.5, 1.0):
            yield (
                f"blank frame ({label})",
                {name: generated_array(kind, rng, level) for name, kind in modalities},
            )


def swapped_inputs(data_spec: str, per_swap: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Images of one modality sent in another modality's field (SWAPS), decoded from their files as the
    service decodes uploads, from the trained domains' test splits."""
    wanted = dict.fromkeys(SWAPS, 0)
    for source in parse_data_spec(data_spec):
        for domain in source.domains():
            for ref in source.refs("test", domain.name):
                for field, real in SWAPS:
                    if wanted[(field, real)] >= per_swap or real not in domain.modality_names:
                        continue
                    files = getattr(ref, "files", None) or {}
                    if real in files:
                        array = decode_bytes(Path(files[real]).read_bytes())
                    else:
                        array = source.load(ref).modalities[real]
                    wanted[(field, real)] += 1
                    yield f"{real} images sent as {field}", {field: array}


def out_of_distribution(matcher: Matcher, inputs: Iterator[tuple[str, dict[str, np.ndarray]]]) -> dict:
    """Per input group: rejected (beyond every bound), refused as invalid, and the nearest domains."""
    groups: dict[str, Counter] = defaultdict(Counter)
    nearest: dict[str, Counter] = defaultdict(Counter)
    for group, arrays in inputs:
        groups[group]["n"] += 1
        try:
            match = matcher.match(arrays)
        except ModalityError:
            match = None
        if match is None:
            groups[group]["refused_invalid"] += 1
            continue
        nearest[group][match.scored.served.domain] += 1
        if match.scored.ratio > 1:
            groups[group]["rejected"] += 1
    report = {
        group: {
            "n": seen["n"],
            "rejected": seen["rejected"],
            "refused_invalid": seen["refused_invalid"],
            "rate": rate(seen["rejected"] + seen["refused_invalid"], seen["n"]),
            "nearest": dict(nearest[group]),
        }
        for group, seen in groups.items()
    }
    total = sum(entry["n"] for entry in report.values())
    caught = sum(entry["rejected"] + entry["refused_invalid"] for entry in report.values())
    return {"groups": report, "samples": total, "rejection_rate": rate(caught, total)}


def subset_scoring(matcher: Matcher, data_spec: str) -> dict:
    """Image AUROC of each domain with calibrated subsets: the full set and every subset."""
    report = {}
    for source in parse_data_spec(data_spec):
        for domain in source.domains():
            spec = matcher.manifest.domains.get(domain.name)
            if spec is None or not spec.subsets:
                continue
            loaded = [source.load(ref) for ref in source.refs("test", domain.name)]
            labels = np.array([sample.label for sample in loaded])
            entry = {"n": len(loaded), "defective": int(labels.sum())}
            for key in [domain.name, *(f"{domain.name}:{subset}" for subset in spec.subsets)]:
                names = matcher.sets[key].spec.modality_names
                samples = [{name: s.modalities[name] for name in names} for s in loaded]
                entry["+".join(names)] = auroc(matcher.image_scores(key, samples), labels)
            report[domain.name] = entry
    return report


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `run` over `repeats` calls, after one warm-up call."""
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(1e3 * (time.perf_counter() - started))
    return float(np.median(samples))


def pass_cost(matcher: Matcher, repeats: int = 20) -> dict:
    """Median ms of one batch-1 run of the signature graph and of the frozen graph, per modality count
    of the bundle's domains: what inferring the domain adds to a request (one thread)."""
    size = matcher.manifest.input_size
    report = {}
    for spec in sorted(matcher.manifest.domains.values(), key=lambda s: len(s.modalities)):
        count = str(len(spec.modalities))
        if count in report:
            continue
        images = np.zeros((1, len(spec.modalities), 3, size, size), np.float32)
        feeds = {"images": images, "domain": np.array([spec.index], dtype=np.int64)}
        report[count] = {
            "signature_ms": median_ms(
                partial(matcher.signature.run, ["signature"], {"images": images}), repeats
            ),
            "frozen_ms": median_ms(partial(matcher.frozen.run, ["image_score"], feeds), repeats),
        }
    return report


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(report: dict) -> str:
    """The RESULTS.md section of a report."""
    known, ood, subsets = report["known_domains"], report["out_of_distribution"], report["subsets"]
    lines = [
        RESULTS_HEADING,
        "",
        (
            f"`python scripts/domain_ood_eval.py --bundle {report['bundle']}` (onnxruntime, the service's rule; "
            f"bound: {report['bound_rule']}). Raw report: `{report['out']}`."
        ),
        "",
        (
            f"Domain identification on {known['samples']} test samples (normal and defective): "
            f"**{percent(known['accuracy'])} %**; false rejects: normals {percent(known['false_reject_rate']['normal'])} %, "
            f"defects {percent(known['false_reject_rate']['defective'])} %."
        ),
        "",
        "| domain | samples | domain-ID accuracy % | confused with | false reject normals % | false reject defects % |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, entry in known["per_domain"].items():
        confused = ", ".join(
            f"{other} ({count})" for other, count in known["confusion"][name].items() if other != name
        )
        rejects = entry["false_reject"]
        lines.append(
            f"| {name} | {entry['samples']} | {percent(entry['accuracy'])} | {confused or '–'} | "
            f"{percent(rejects['normal']['rate'])} ({rejects['normal']['rejected']}/{rejects['normal']['n']}) | "
            f"{percent(rejects['defective']['rate'])} ({rejects['defective']['rejected']}/{rejects['defective']['n']}) |"
        )
    blank = {name: e["false_reject"]["blank_depth"] for name, e in known["per_domain"].items()}
    blank_notes = [
        f"{name} {entry['rejected']} of {entry['n']}" for name, entry in blank.items() if entry["n"]
    ]
    if blank_notes:
        lines += [
            "",
            "Of those, samples with a blank depth image (a MulSen artifact): " + ", ".join(blank_notes) + ".",
        ]
    lines += [
        "",
        f"Out-of-distribution inputs: **{percent(ood['rejection_rate'])} %** of {ood['samples']} rejected.",
        "",
        "| input | n | rejected (beyond bound) | refused as invalid | rejection % | nearest domain |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for group, entry in ood["groups"].items():
        nearest = ", ".join(f"{name} ({count})" for name, count in entry["nearest"].items())
        lines.append(
            f"| {group} | {entry['n']} | {entry['rejected']} | {entry['refused_invalid']} | "
            f"{percent(entry['rate'])} | {nearest or '–'} |"
        )
    cost = ", ".join(
        f"{count} modalities {entry['signature_ms']:.1f} ms vs {entry['frozen_ms']:.1f} ms"
        for count, entry in report["pass_cost_ms"].items()
    )
    lines += [
        "",
        f"Cost of inferring the domain (signature graph vs frozen graph, batch 1, one thread): {cost}.",
    ]
    if subsets:
        lines += ["", "Image AUROC % per calibrated subset (frozen graph, test split):", ""]
        for name, entry in subsets.items():
            columns = [key for key in entry if key not in ("n", "defective")]
            lines += [
                f"{name} ({entry['n']} test samples, {entry['defective']} defective):",
                "",
                "| " + " | ".join(columns) + " |",
                "|" + "---:|" * len(columns),
                "| " + " | ".join(percent(entry[key]) for key in columns) + " |",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def write_section(path: Path, section: str) -> None:
    """Put `section` between this script's markers in `path` (appended the first time); the rest stays."""
    marked = f"{START_MARK}\n{section}{END_MARK}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if START_MARK in text and END_MARK in text:
        before, rest = text.split(START_MARK, 1)
        marked = before + marked + rest.split(END_MARK, 1)[1].lstrip("\n")
    elif text:
        marked = text.rstrip("\n") + "\n\n" + marked
    path.write_text(marked, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (format 3)")
    parser.add_argument("--data", default=TRAINED_DATA, help=f"the trained domains (default {TRAINED_DATA})")
    parser.add_argument(
        "--ood-data",
        default=None,
        help="held-out datasets never trained on (default: bottle of mvtec_ad and flat_pad of MulSen in the "
        "shared data)",
    )
    parser.add_argument(
        "--generated", type=int, default=20, help="noise samples per modality set (default 20)"
    )
    parser.add_argument("--swaps", type=int, default=20, help="images per modality swap (default 20)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many test samples per domain")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write")
    parser.add_argument("--results-md", type=Path, help="markdown file whose section this script rewrites")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ood_spec = args.ood_data or HELD_OUT_DATA.format(shared=shared_data_root())
        matcher = Matcher(args.bundle)
        report = {
            "bundle": str(args.bundle),
            "out": str(args.out),
            "bound_rule": BOUND_RULE,
            "known_domains": known_domains(matcher, args.data, args.limit),
            "out_of_distribution": out_of_distribution(
                matcher,
                (
                    item
                    for inputs in (
                        held_out_inputs(ood_spec),
                        generated_inputs(matcher.manifest, args.generated, seed=0),
                        swapped_inputs(args.data, args.swaps),
                    )
                    for item in inputs
                ),
            ),
            "subsets": subset_scoring(matcher, args.data),
            "pass_cost_ms": pass_cost(matcher),
        }
    except (BundleError, ValueError, OSError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    section = markdown(report)
    if args.results_md is not None:
        write_section(args.results_md, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
