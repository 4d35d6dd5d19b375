"""nnserve benchmarks: the served path against the in-process ONNX Runtime floor, beside
its peers, and the GPU check; all on one harness (docs/benchmarks.md).

harness       start a server (port 0 + ports file), wait until ready, measure_point
loadgen       the closed-loop gRPC load generator (processes, unary and streams)
workload      inputs, pre-serialized requests, response checks, the in-process floor
report        tables, targets, JSON and plots for every benchmark
run           `python -m bench`: a run over models x APIs x concurrency, and the soak
nullserver    the no-op KServe v2 server on grpc.aio or pygrpc-native (the floor)
perf_analyzer Triton's C++ client, fetched and run on the same points
gpu_check     `python -m bench.gpu_check`: CUDA placement, parity and throughput
peers         `python -m bench.peers`: nnserve beside no-op servers, MLServer, Triton
"""
