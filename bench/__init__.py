"""nnserve benchmark: in-process ONNX Runtime floor vs the served path (KServe v2 and
nnserve.v1) under closed-loop load, with server CPU, memory, soak and perf_analyzer.

Entry point: `python -m bench` (see bench/__main__.py and docs/benchmarks.md).
"""
