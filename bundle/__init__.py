"""The export bundle contract: the manifest schema and the loader with its integrity checks (torch-free)."""

from bundle.loader import Bundle, BundleError, GraphFiles, file_sha256, load_bundle
from bundle.manifest import FORMAT_VERSION, Manifest

__all__ = ["FORMAT_VERSION", "Bundle", "BundleError", "GraphFiles", "Manifest", "file_sha256", "load_bundle"]
