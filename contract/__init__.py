"""The model contract shared by training, export, services, bench and tests.

A top-level package, not a module of services/, export/ or training/, so every side
can import it without pulling the others' dependencies: it needs numpy and the
standard library only (no gRPC, protobuf, ONNX Runtime or torch). export/ imports it
without grpc; services/ import it without torch.
"""
