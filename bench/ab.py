"""A/B the served path: several server variants (a checkout and its server arguments),
measured in alternating rounds with the same load generator, medians of rounds and
ratios to the first variant, printed as a table.

    python -m bench.ab --repository model_repository --rounds 3 \\
        --variant 'base=--inline-max-compute-us 0' --variant 'inline=' \\
        --variant 'old=@../old-checkout'

A variant is NAME=ARGS, where ARGS are extra `python -m services` arguments; a leading
`@PATH` serves from another checkout of the project (its own code, this machine's
Python), e.g. the commit before a change. Each variant gets a fresh classify process per
round; the points are `python -m bench --address ... --server-pid ...` (KServe v2 unary).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KEYS = ("inferences_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")


@dataclass(frozen=True)
class Variant:
    name: str
    root: Path
    args: list[str]

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, rest = text.partition("=")
        words = shlex.split(rest)
        root = PROJECT_ROOT
        if words and words[0].startswith("@"):
            root = Path(words.pop(0)[1:]).resolve()
        return cls(name, root, words)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING")


def measure(variant: Variant, opts: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    port = _free_port()
    command = [
        sys.executable, "-m", "services", "--service", "classify", "--models", '["mlp"]',
        "--repository", str(opts.repository.resolve()), "--grpc-port", str(port),
        "--metrics-port", "-1", *variant.args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(variant.root)}
    server = subprocess.Popen(command, cwd=variant.root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_serving(f"127.0.0.1:{port}", server)
        bench = [
            sys.executable, "-m", "bench", "--address", f"127.0.0.1:{port}",
            "--server-pid", str(server.pid), "--models", "mlp", "--apis", "v2",
            "--repository", str(opts.repository), "--concurrency", opts.concurrency,
            "--duration", opts.duration, "--warmup", "1s", "--no-floor", "--no-plots",
            "--out", str(out), "--log-level", "WARNING",
        ]  # fmt: skip
        subprocess.run(bench, cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL)
        doc = json.loads((out / "latest.json").read_text())
        return list(doc["points"])
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--variant", action="append", required=True, type=Variant.parse)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--duration", default="3s")
    opts = parser.parse_args()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {v.name: {} for v in opts.variant}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(opts.rounds):
            for variant in opts.variant:
                print(f"round {round_ + 1}/{opts.rounds}: {variant.name}", flush=True)
                for point in measure(variant, opts, Path(tmp)):
                    results[variant.name].setdefault(point["concurrency"], []).append(point)

    def median(name: str, c: int, key: str) -> float:
        values = [p[key] for p in results[name][c] if p.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    base = opts.variant[0].name
    print(f"\nmlp, KServe v2 unary, batch 1; medians of {opts.rounds} alternating rounds")
    header = f"{'variant':<14} {'c':>4} {'infer/s':>9} {'x base':>7} {'p50 ms':>8} {'x base':>7}"
    print(header + f" {'p99 ms':>8} {'srv us/req':>10} {'x base':>7}")
    for variant in opts.variant:
        for c in sorted(results[variant.name]):
            row = [median(variant.name, c, key) for key in KEYS]
            ratio = [v / median(base, c, key) for v, key in zip(row, KEYS, strict=True)]
            rate, p50, p99, cpu = row
            print(
                f"{variant.name:<14} {c:>4} {rate:>9.0f} {ratio[0]:>7.2f} {p50:>8.3f}"
                f" {ratio[1]:>7.2f} {p99:>8.3f} {cpu:>10.0f} {ratio[3]:>7.2f}"
            )


if __name__ == "__main__":
    main()
