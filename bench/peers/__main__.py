"""`python -m bench.peers [options]`: nnserve beside its peers (see docs/benchmarks.md).

python -m bench.peers --repository model_repository              # mlp, 3 rounds
python -m bench.peers --servers noop,nnserve --rounds 1 --no-perf-analyzer   # no installs
python -m bench.peers --setup-only                               # build the peer envs
python -m bench.peers --page docs/benchmark-results.md           # + the results page

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
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

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
    add("--page", type=Path, default=None,
        help="also write the report as a markdown page here (date, machine, commit, command, "
        "tables), its plots in images/ beside it; e.g. docs/benchmark-results.md")
    add("--setup-only", action="store_true", help="create (or check) the peer environments")
    add("--log-level", default="INFO")
    # fmt: on
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    if args.page is not None:
        doc["files"].append(str(write_page(doc, args.page, argv, args.out)))
    print("results: " + ", ".join(doc["files"]))
    return 0


def write_page(doc: dict[str, Any], page: Path, argv: list[str], out: Path) -> Path:
    """The markdown report at `page`, each model's plot (from `out`, when plots were made)
    copied to images/peers-<model>.png beside it."""
    from bench import report

    images = {}
    for model in doc["options"]["models"]:
        plot = out / f"peers-latest-{model}.png"
        if doc["options"]["plots"] and plot.is_file():
            (page.parent / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plot, page.parent / "images" / f"peers-{model}.png")
            images[model] = f"images/peers-{model}.png"
    command = shlex.join(["python", "-m", "bench.peers", *argv])
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(report.peers_page(doc, command, images))
    return page


if __name__ == "__main__":
    sys.exit(main())
