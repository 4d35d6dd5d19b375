"""`python -m bench [options]`: benchmark the nnserve services (see docs/benchmarks.md).

python -m bench --repository model_repository             # all five models, both APIs
python -m bench --models mlp --concurrency 1,32 --quick   # smoke run
python -m bench --address 127.0.0.1:8001 --models mlp     # any KServe v2 server (v2 only)
python -m bench --soak 600                                # memory growth under load (mlp)
python -m bench --perf-analyzer                           # + Triton's perf_analyzer numbers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shlex
import sys
from pathlib import Path

from bench.run import ALL_MODELS, Options

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|min)?\s*$")


def duration(text: str) -> float:
    """'5', '5s', '500ms', '2m' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 5s, 500ms, 2m)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}[unit]


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return values


def name_list(text: str) -> list[str]:
    """'mlp,cnn' or a JSON list '["mlp", "cnn"]'."""
    text = text.strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return [v.strip() for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    """Options whose `dest` is an Options field go straight into Options."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = p.add_argument
    # fmt: off
    add("--repository", type=Path, default=Path("model_repository"),
        help="model repository (default: model_repository)")
    add("--models", type=name_list, default=None,
        help="models to run, e.g. mlp,cnn (default: all five; required with --address)")
    add("--concurrency", type=int_list, default=[1, 8, 32, 128],
        help="requests in flight per point (default: 1,8,32,128)")
    add("--duration", dest="duration_s", type=duration, default=None,
        help="measured time per point (default 5s)")
    add("--warmup", dest="warmup_s", type=duration, default=None,
        help="unmeasured time before each point (default 1s)")
    add("--apis", type=name_list, default=["v2", "domain"],
        help="v2,domain (default) and v2-stream: KServe v2 over ModelStreamInfer streams")
    add("--stream-window", type=int, default=4,
        help="v2-stream: requests in flight per stream; a point of concurrency C opens "
        "ceil(C / window) streams (default 4: one stream writes its answers one at a "
        "time, so a few streams serve more than one)")
    add("--workers", type=int, default=1, help="--workers passed to the services (default 1)")
    add("--server-args", type=shlex.split, default=[],
        help="extra arguments for `python -m services`, e.g. '--max-queue-delay-ms 1'")
    add("--address", default=None,
        help="benchmark a running KServe v2 server instead of starting the services")
    add("--server-pid", type=int, default=None,
        help="with --address on this machine: server process for CPU and memory readings")
    add("--clients", type=int, default=1,
        help="load-generator processes (default 1; see docs/benchmarks.md)")
    add("--channels", type=int, default=0,
        help="gRPC channels (TCP connections) per load process (default: max(1, workers))")
    add("--seq-len", type=int, default=32, help="tokens per sequence request (default 32)")
    add("--floor-batches", type=int_list, default=[1, 32],
        help="in-process batch sizes (default 1,32)")
    add("--no-floor", dest="floor", action="store_false",
        help="skip the in-process ONNX Runtime floor")
    add("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    add("--out", type=Path, default=Path("bench/results"),
        help="results folder (default bench/results)")
    add("--quick", action="store_true", help="smoke run: 1 s points, 0.3 s warm-up, short floor")
    add("--perf-analyzer", action="store_true",
        help="also run Triton's perf_analyzer on the same points (fetched on first use)")
    add("--loadgen-ceiling", action="store_true",
        help="first measure the load generator alone against the no-op server")
    add("--soak", type=duration, default=None, metavar="SECONDS",
        help="soak mode: hold load on the mlp this long, report RSS growth")
    add("--soak-concurrency", type=int, default=32, help="requests in flight during the soak")
    add("--soak-interval", type=duration, default=10.0, help="RSS sampling interval in the soak")
    add("--timeout", dest="timeout_s", type=duration, default=30.0,
        help="per-request deadline (default 30s)")
    add("--log-level", default="INFO")
    # fmt: on
    return p


def options_from(args: argparse.Namespace) -> Options:
    if args.address and not args.models:
        raise SystemExit("--address needs --models (the models to benchmark on that server)")
    quick = args.quick
    args.models = args.models or list(ALL_MODELS)
    args.duration_s = args.duration_s if args.duration_s is not None else (1.0 if quick else 5.0)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (0.3 if quick else 1.0)
    args.stream_window = max(1, args.stream_window)
    fields = {f.name for f in dataclasses.fields(Options)} & set(vars(args))
    opts = Options(**{name: getattr(args, name) for name in fields})
    if quick:
        opts.floor_duration_s, opts.perf_analyzer_window_ms = 0.3, 1000
    return opts


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    from bench import report, run

    opts = options_from(args)
    if args.soak is not None:
        doc = run.soak(opts, args.soak, args.soak_concurrency, args.soak_interval)
        print(run.soak_summary(doc))
        return 0 if doc["soak"]["ok"] else 1
    doc = run.run(opts)
    print(report.run_table(doc))
    print("results: " + ", ".join(doc["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
