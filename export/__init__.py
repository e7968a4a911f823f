"""Checkpoint -> ONNX bundle with the C-MoE routing frozen per domain; verification and benchmarks."""
