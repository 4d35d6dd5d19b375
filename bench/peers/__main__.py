"""`python -m bench.peers [options]`: nnserve beside its peers (see docs/benchmarks.md).

python -m bench.peers --repository model_repository              # mlp, 3 rounds
python -m bench.peers --servers noop,nnserve --rounds 1 --no-perf-analyzer   # no installs
python -m bench.peers --setup-only                               # build the peer envs

Servers: noop and noop-native (bench.nullserver on grpc.aio and on pygrpc-native's
NativeGrpcFront: fixed answers, the floor of a Python gRPC server), nnserve and
nnserve-native (the services with NNSERVE_FRONTEND=aio and native), mlserver (MLServer
1.7.1, its own runtime class around ONNX Runtime, adaptive batching), triton
(tritonserver from nvidia-pytriton 0.7.0, the model in a Python-backend model.py,
dynamic batching). MLServer and Triton are installed on first use into their own
virtualenvs under bench/.cache/peers/.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from bench.__main__ import duration, int_list, name_list
from bench.peers import SERVERS


def parser() -> argparse.ArgumentParser:
    """Options whose `dest` is a PeerOptions field go straight into PeerOptions."""
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = p.add_argument
    # fmt: off
    add("--repository", type=Path, default=Path("model_repository"))
    add("--models", type=name_list, default=["mlp"], help="default: mlp")
    add("--servers", type=name_list, default=list(SERVERS),
        help=f"subset of {','.join(SERVERS)} (default: all)")
    add("--concurrency", type=int_list, default=[1, 32, 128], help="default: 1,32,128")
    add("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    add("--duration", dest="duration_s", type=duration, default=5.0, help="per point (default 5s)")
    add("--warmup", dest="warmup_s", type=duration, default=1.0, help="per point (default 1s)")
    add("--no-perf-analyzer", dest="perf_analyzer", action="store_false")
    add("--window-ms", dest="perf_analyzer_window_ms", type=int, default=2000,
        help="perf_analyzer window (default 2000)")
    add("--peer-queue-delay-ms", type=float, default=0.0,
        help="MLServer max_batch_time / Triton max_queue_delay (default 0: batch what is "
        "queued; -1: nnserve's model.json value)")
    add("--no-pin", dest="pin", action="store_false",
        help="do not pin client and servers to separate CPUs")
    add("--stream-window", type=int, default=4,
        help="requests in flight per ModelStreamInfer stream for the streaming clients "
        "(bench streams, perf_analyzer --streaming); 0: unary only")
    add("--no-plots", dest="plots", action="store_false")
    add("--out", type=Path, default=Path("bench/results"))
    add("--setup-only", action="store_true", help="create (or check) the peer environments")
    add("--log-level", default="INFO")
    # fmt: on
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown or args.rounds < 1:
        raise SystemExit(f"--servers from {','.join(SERVERS)}; --rounds >= 1 (got {unknown})")
    if args.setup_only:
        from bench.peers.servers import REQUIREMENTS, PeerUnavailable, ensure_env

        failed = 0
        for name in (s for s in args.servers if s in REQUIREMENTS):
            try:
                print(f"{name}: {ensure_env(name).root}")
            except PeerUnavailable as exc:
                print(f"{name}: unavailable: {exc}")
                failed += 1
        return 1 if failed else 0
    from bench import report
    from bench.peers.run import PeerOptions, run

    args.servers = [s for s in SERVERS if s in args.servers]
    args.stream_window = max(0, args.stream_window)
    if args.peer_queue_delay_ms < 0:
        args.peer_queue_delay_ms = None
    fields = {f.name for f in dataclasses.fields(PeerOptions)} & set(vars(args))
    doc = run(PeerOptions(**{name: getattr(args, name) for name in fields}))
    print(report.peers_table(doc))
    print("results: " + ", ".join(doc["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
