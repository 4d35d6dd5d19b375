"""MLServer runtime: the same model.onnx under ONNX Runtime, in MLServer's own MLModel API.

Copied into the generated MLServer model folder and loaded by `mlserver start` (the class
named in model-settings.json `implementation`), not imported by nnserve. With adaptive
batching on, MLServer merges concurrent requests along the batch axis before `predict`
and splits the response after it.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):  # type: ignore[misc]  # mlserver is not installed beside nnserve
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        # The same session options as nnserve's default: one intra-op thread, no spinning.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self.output_names, results, strict=True)
            ],
        )
