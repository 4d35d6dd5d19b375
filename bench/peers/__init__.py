"""Peers in the benchmark: nnserve beside the no-op grpc.aio floor, MLServer and Triton,
with the same clients, in one run (`python -m bench.peers`, `make bench-peers`)."""
