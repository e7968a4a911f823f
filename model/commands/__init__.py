"""Sub-commands of `python -m model`: one module each, exposing `register(subparsers)` and `run(args) -> int`.

Modules must not import torch at import time (inside `run` only), so `--help` stays fast and torch-free.
"""
