"""The training report and the measured claims behind it (``python -m evaluation.report``).

It trains with :mod:`training` and may export with :mod:`export` (the ONNX Runtime
timings), so it sits above both: nothing in training or export imports it.
"""
