"""`python -m bench.peers [options]`: nnserve beside its peers (see docs/benchmarks.md).

python -m bench.peers --repository model_repository                 # mlp, 3 rounds
python -m bench.peers --servers noop,nnserve --rounds 1 --no-perf-analyzer   # no installs
python -m bench.peers --setup-only                                  # build the peer envs

Servers: noop (a grpc.aio servicer that answers fixed bytes: the floor of Python gRPC),
nnserve, mlserver (MLServer 1.7.1, its own runtime class around ONNX Runtime, adaptive
batching), triton (tritonserver from nvidia-pytriton 0.7.0, the model in a Python-backend
model.py, dynamic batching). MLServer and Triton are installed on first use into their
own virtualenvs under bench/.cache/peers/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.__main__ import duration, int_list, name_list
from bench.peers.run import SERVERS, PeerOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--models", type=name_list, default=["mlp"], help="default: mlp")
    p.add_argument("--servers", type=name_list, default=list(SERVERS),
                   help=f"subset of {','.join(SERVERS)} (default: all)")  # fmt: skip
    p.add_argument("--concurrency", type=int_list, default=[1, 8, 32, 128])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--duration", type=duration, default=5.0, help="per point (default 5s)")
    p.add_argument("--warmup", type=duration, default=1.0, help="per point (default 1s)")
    p.add_argument("--no-perf-analyzer", action="store_true")
    p.add_argument("--window-ms", type=int, default=2000,
                   help="perf_analyzer measurement window (default 2000)")  # fmt: skip
    p.add_argument("--peer-queue-delay-ms", type=float, default=0.0,
                   help="MLServer max_batch_time / Triton max_queue_delay (default 0: batch "
                   "what is queued; -1: nnserve's model.json value)")  # fmt: skip
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin client and servers to separate CPUs")  # fmt: skip
    p.add_argument("--stream-window", type=int, default=4,
                   help="requests in flight per ModelStreamInfer stream for the streaming "
                   "clients (bench-stream, perf_analyzer --streaming); 0: unary only")  # fmt: skip
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--setup-only", action="store_true",
                   help="create (or check) the peer environments, then exit")  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown or args.rounds < 1:
        raise SystemExit(f"--servers from {','.join(SERVERS)}; --rounds >= 1 (got {unknown})")
    if args.setup_only:
        from bench.peers import envs

        failed = 0
        for name in (s for s in args.servers if s in envs.ENVS):
            try:
                env = envs.ensure(envs.ENVS[name])
                print(f"{name}: {env.root}")
            except envs.PeerUnavailable as exc:
                print(f"{name}: unavailable: {exc}")
                failed += 1
        return 1 if failed else 0
    from bench.peers import report, run

    opts = PeerOptions(
        repository=args.repository,
        models=args.models,
        servers=[s for s in SERVERS if s in args.servers],
        concurrency=args.concurrency,
        rounds=args.rounds,
        duration_s=args.duration,
        warmup_s=args.warmup,
        perf_analyzer=not args.no_perf_analyzer,
        perf_analyzer_window_ms=args.window_ms,
        pin=not args.no_pin,
        out=args.out,
        plots=not args.no_plots,
        stream_window=max(0, args.stream_window),
        peer_queue_delay_ms=None if args.peer_queue_delay_ms < 0 else args.peer_queue_delay_ms,
    )
    doc = run.run(opts)
    print(report.table(doc))
    print("results: " + ", ".join(doc["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
