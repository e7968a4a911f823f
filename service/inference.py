"""The only place that calls onnxruntime: session creation, contract checks and batched runs.

``InferenceEngine.run`` is synchronous and executes on the engine's single worker thread; the event
loop reaches it only through :meth:`InferenceEngine.run_async`.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from bundle.loader import SIGNATURE_GRAPH, Bundle, BundleError, load_bundle
from bundle.manifest import Manifest
from service.domain_match import ServedSet, served_sets
from service.settings import CUDA_PROVIDER, Settings

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("anomaly_map", "modality_maps", "image_score", "modality_scores")
# Format 3 graphs also output the domain signature (bundle.domain_match); format 2 graphs do not.
SIGNATURE_OUTPUT = "signature"


@dataclass(frozen=True)
class BatchOutputs:
    """Graph outputs for a batch of B samples of one domain with M modalities."""

    anomaly_map: np.ndarray  # [B, S, S]
    modality_maps: np.ndarray  # [B, M, S, S]
    image_score: np.ndarray  # [B]
    modality_scores: np.ndarray  # [B, M]
    signature: np.ndarray | None = None  # [B, M, F]; None from a graph without the output


def first_line(error: BaseException) -> str:
    """The first line of an error's message (ORT's run and load errors span many), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def choose_providers(requested: list[str], *, require_gpu: bool) -> list[str]:
    """The requested providers this onnxruntime build offers, in the requested order."""
    available = ort.get_available_providers()
    chosen = [p for p in requested if p in available]
    if require_gpu and CUDA_PROVIDER not in chosen:
        raise BundleError(
            f"require_gpu is set but {CUDA_PROVIDER} is unavailable (onnxruntime offers {', '.join(available)})"
        )
    if not chosen:
        raise BundleError(f"none of the providers {requested} is available; onnxruntime offers {available}")
    return chosen


def serving_graphs(manifest: Manifest, override: str) -> dict[str, str]:
    """The graph serving each domain: the manifest's choice, or ``override`` for every domain; calibrated
    subsets ('domain:subset') are served by the frozen graph they were calibrated on.

    A domain's threshold and heatmap ranges were calibrated on its manifest graph, and the manifest keeps
    them for that graph only; serving the domain with the other graph would pair it with them. So an
    override that differs from a domain's manifest graph is refused (one line naming those domains).
    """
    subsets = {key: "frozen" for key, served in served_sets(manifest).items() if served.subset is not None}
    if override == "manifest":
        return {name: spec.graph for name, spec in manifest.domains.items()} | subsets
    mismatched = sorted(name for name, spec in manifest.domains.items() if spec.graph != override)
    if mismatched:
        raise BundleError(
            f"UNIMMAD_GRAPH={override} would serve {', '.join(mismatched)} with thresholds and heatmap ranges "
            f"calibrated for the other graph (the manifest has none for {override}); use UNIMMAD_GRAPH=manifest"
        )
    return {name: override for name in manifest.domains} | subsets


class InferenceEngine:
    """The bundle's ORT sessions (frozen and/or dynamic graph, as the served sets need, and the signature
    graph when the bundle has one), run on one worker thread."""

    def __init__(self, bundle: Bundle, settings: Settings) -> None:
        self.bundle = bundle
        self.sets: dict[str, ServedSet] = served_sets(bundle.manifest)
        self.graph_of = serving_graphs(bundle.manifest, settings.graph)
        self._graph_by_index = {served.spec.index: self.graph_of[key] for key, served in self.sets.items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.log_severity_level = 3
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0"
        )
        providers = choose_providers(settings.providers, require_gpu=settings.require_gpu)
        self.sessions = {
            kind: self._open(kind, options, providers) for kind in sorted(set(self.graph_of.values()))
        }
        self._outputs = {
            kind: [*OUTPUT_NAMES, *self._signature_output(session)] for kind, session in self.sessions.items()
        }
        self.signature_session = (
            self._open_signature(options, providers) if SIGNATURE_GRAPH in bundle.graphs else None
        )
        self.provider = next(iter(self.sessions.values())).get_providers()[0]
        if settings.require_gpu and self.provider != CUDA_PROVIDER:
            raise BundleError(f"require_gpu is set but the session runs on {self.provider}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self.last_error: str | None = None
        log.info(
            "onnxruntime sessions ready", extra={"provider": self.provider, "graphs": sorted(self.sessions)}
        )

    def _open(self, kind: str, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        """An ORT session over the bundle's `kind` graph whose inputs and outputs match the contract."""
        graph = self.bundle.graph(kind)
        try:
            session = ort.InferenceSession(str(graph.model), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 -- ORT raises private types for a corrupt or incompatible graph
            raise BundleError(f"onnxruntime cannot load {graph.model.name}: {first_line(exc)}") from None
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        needed_inputs = {"images", "domain"}
        if not needed_inputs <= inputs or not set(OUTPUT_NAMES) <= outputs:
            raise BundleError(
                f"the {kind} graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                f"expected inputs {sorted(needed_inputs)} and outputs {sorted(OUTPUT_NAMES)}"
            )
        return session

    @staticmethod
    def _signature_output(session: ort.InferenceSession) -> list[str]:
        return [SIGNATURE_OUTPUT] if SIGNATURE_OUTPUT in {o.name for o in session.get_outputs()} else []

    def _open_signature(self, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        """The signature graph (the prior alone): images -> signature, for requests without a domain."""
        path = self.bundle.graph(SIGNATURE_GRAPH).model
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 -- ORT raises private types for a corrupt or incompatible graph
            raise BundleError(f"onnxruntime cannot load {path.name}: {first_line(exc)}") from None
        if not self._signature_output(session):
            raise BundleError(f"the signature graph {path.name} has no {SIGNATURE_OUTPUT!r} output")
        return session

    def run(self, images: np.ndarray, domain_index: int) -> BatchOutputs:
        """``images`` float32 ``[B, M, 3, S, S]`` of one served set -> its graph's outputs."""
        feeds = {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "domain": np.array([domain_index], dtype=np.int64),
        }
        kind = self._graph_by_index[domain_index]
        return BatchOutputs(*self.sessions[kind].run(self._outputs[kind], feeds))

    def signatures(self, images: np.ndarray) -> np.ndarray:
        """``images`` float32 ``[B, M, 3, S, S]`` -> signatures ``[B, M, F]`` from the signature graph."""
        if self.signature_session is None:
            raise BundleError("this bundle has no signature graph")
        feeds = {"images": np.ascontiguousarray(images, dtype=np.float32)}
        return self.signature_session.run([SIGNATURE_OUTPUT], feeds)[0]

    async def signatures_async(self, images: np.ndarray) -> np.ndarray:
        """:meth:`signatures` on the worker thread (one run at a time with the batches)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.signatures, images)

    async def run_async(self, images: np.ndarray, domain_index: int) -> BatchOutputs:
        """:meth:`run` on the worker thread; ``last_error`` keeps the latest failure until a run succeeds."""
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run, images, domain_index
            )
        except Exception as exc:
            self.last_error = first_line(exc)
            raise
        self.last_error = None
        return outputs

    def close(self) -> None:
        """Wait for the running batch, then release the worker thread."""
        self._executor.shutdown(wait=True)


def load_engine(settings: Settings) -> InferenceEngine:
    """Load and verify the bundle, then open its session; every failure is one :class:`BundleError` line."""
    return InferenceEngine(load_bundle(settings.bundle), settings)
