"""Torch-free inference service: FastAPI + onnxruntime over an exported UniMMAD bundle."""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
