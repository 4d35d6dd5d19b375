"""Peers in the benchmark: nnserve beside the no-op grpc.aio floor, MLServer and Triton,
with the same clients, in one run (`python -m bench.peers`, `make bench-peers`)."""

# Every server of a peers run, in table order, and its name in tables and plots.
SERVERS = ("noop", "nnserve", "mlserver", "triton")
LABELS = {
    "noop": "no-op grpc.aio",
    "nnserve": "nnserve",
    "mlserver": "MLServer 1.7.1",
    "triton": "Triton (pytriton 0.7.0)",
}
