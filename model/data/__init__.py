"""Data adapters: every dataset layout -> domains and :class:`Sample`; the multi-domain loader."""

from model.data.registry import parse_data_spec, shared_data_root
from model.data.sample import SPLITS, Domain, Sample, SampleRef, Source, Split
from model.data.synthetic import SyntheticConfig, SyntheticSource

__all__ = [
    "SPLITS",
    "Domain",
    "Sample",
    "SampleRef",
    "Source",
    "Split",
    "SyntheticConfig",
    "SyntheticSource",
    "parse_data_spec",
    "shared_data_root",
]
