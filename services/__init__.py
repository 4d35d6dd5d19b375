"""nnserve gRPC services: ONNX Runtime models behind KServe v2 and the nnserve.v1 API."""

__version__ = "0.1.0"
