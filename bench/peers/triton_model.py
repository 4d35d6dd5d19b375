"""Triton Python-backend model: the same model.onnx under ONNX Runtime, one run per batch.

Copied into the generated Triton model repository as <model>/1/model.py and run by
Triton's Python-backend stub, not imported by nnserve. Triton's dynamic batcher hands
`execute` every request it gathered; they are stacked along the batch axis, run in one
`InferenceSession.run` and split back, one response per request (Triton's documented
pattern for batching in a Python model).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by the stub


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        options = ort.SessionOptions()
        # The same session options as nnserve's default: one intra-op thread, no spinning.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = {}
        sizes: list[int] = []
        for name in self.inputs:
            parts = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            feeds[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if not sizes:
                sizes = [len(p) for p in parts]
        results = self.session.run(self.outputs, feeds)
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, value[start : start + size])
                for name, value in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
