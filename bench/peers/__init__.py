"""Peers in the benchmark: nnserve beside no-op servers, MLServer and Triton, with the same
clients, in one run (`python -m bench.peers`, `make bench-peers`)."""

# Every server of a peers run, in table order, and its name in tables and plots.
SERVERS = ("noop", "noop-native", "nnserve", "nnserve-native", "mlserver", "triton")
LABELS = {
    "noop": "no-op grpc.aio",
    "noop-native": "no-op native",
    "nnserve": "nnserve aio",
    "nnserve-native": "nnserve native",
    "mlserver": "MLServer 1.7.1",
    "triton": "Triton (Python backend)",
}
