"""Streaming sessions against re-scoring: what one new log event costs the server.

    python -m bench.streaming [--repository REPO] [--lengths 8,32,128,512] [--sessions 10000]

For each length L: a streaming session scores L events one per message (each event one
step of the step graph, batched across sessions when several arrive together), and
8 per message (the same steps, fewer messages), against
the Sequence RPC re-scoring the whole window of L events, which is what each new event
costs without server-side state. Reported per event: the server process's CPU time
(user + system, from /proc, so the client's own cost is left out) and the client's
median latency. Then sessions held at once: idle sessions (each stepped once, call
ended, resumable) up to the server's bound, and sessions attached to open calls, with
the server's resident memory per 1000 sessions.

Without --repository the bench trains an lstm for one step with max_length = the
longest length asked for (the reference model's is 64) and exports it, step graph and
parity gate included: costs do not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from bench import procstat
from bench.servers import Service, start_service, wait_serving
from contract.model import read_spec, scan
from nnserve_client import NNServeClient, NNServeError, StreamSession
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc

MODEL = "lstm"
BATCHED = 8  # events per message in the second streaming column


def build_repository(root: Path, max_length: int) -> Path:
    from export.api import export_model
    from training.api import train

    result = train(
        MODEL,
        dry_run=True,
        runs_dir=root / "runs",
        overrides={"max_length": max_length, "n_samples": 2000},
        progress=False,
    )
    repository = root / "model_repository"
    export_model(result.checkpoint, repository)
    return repository


def server_cpu(service: Service) -> float:
    return procstat.cpu_seconds(service.pids())


def rss_mib(service: Service) -> float:
    return procstat.memory(service.pids()).rss_bytes / 2**20


def measure(service: Service, work: Callable[[], list[float]], events: int) -> tuple[float, float]:
    """(server CPU microseconds per event, median client latency in ms per call)."""
    before = server_cpu(service)
    latencies = work()
    spent = server_cpu(service) - before
    return spent / events * 1e6, statistics.median(latencies) * 1e3


def streaming(client: NNServeClient, rows: list[list[int]], per_message: int = 1) -> list[float]:
    latencies = []
    for row in rows:
        with client.stream(MODEL) as session:
            for i in range(0, len(row), per_message):
                start = time.perf_counter()
                session.send(row[i : i + per_message])
                latencies.append(time.perf_counter() - start)
        # the session stays until the TTL; the bench server's TTL is short
    return latencies


def rescoring(client: NNServeClient, rows: list[list[int]]) -> list[float]:
    latencies = []
    for row in rows:
        start = time.perf_counter()
        client.score_sequences(MODEL, [row], per_position=True)
        latencies.append(time.perf_counter() - start)
    return latencies


def idle_sessions(address: str, count: int, threads: int = 8) -> tuple[int, str]:
    """Open `count` sessions, step each once, end their calls (sessions stay); returns
    how many were opened and the first refusal's status, if any."""
    opened = [0] * threads
    refused: list[str] = []

    def run(worker: int) -> None:
        channel = grpc.insecure_channel(address)
        predictor = npb_grpc.PredictorStub(channel)
        request = npb.StreamRequest(model_name=MODEL, token_ids=npb.TokenIds(ids=[2]))
        for _ in range(worker, count, threads):
            try:
                list(predictor.Stream(iter([request]), timeout=30))
                opened[worker] += 1
            except grpc.RpcError as err:
                refused.append(f"{err.code().name}: {err.details()}")
                break
        channel.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(opened), refused[0] if refused else ""


def attached_sessions(address: str, count: int) -> tuple[list[StreamSession], list[grpc.Channel]]:
    """`count` sessions on open calls (each stepped once), over a few channels."""
    channels = [grpc.insecure_channel(address) for _ in range(4)]
    held = []
    for i in range(count):
        client = NNServeClient(address, channel=channels[i % len(channels)])
        session = client.stream(MODEL)
        session.send([2])
        held.append(session)
    return held, channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None)
    parser.add_argument("--lengths", default="8,32,128,512")
    parser.add_argument("--events", type=int, default=2048, help="events per streaming run")
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions to hold")
    parser.add_argument("--attached", type=int, default=1000, help="sessions on open calls")
    opts = parser.parse_args()
    lengths = [int(n) for n in opts.lengths.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    repository = opts.repository or build_repository(work, max(lengths))
    version = max(scan(repository)[MODEL])
    spec = read_spec(repository, MODEL, version)
    assert spec.sequence is not None and spec.step is not None, "the lstm needs a step graph"
    max_length = spec.sequence.max_length
    if max(lengths) > max_length:
        print(f"the model's max_length is {max_length}: lengths above it are left out")
        lengths = [n for n in lengths if n <= max_length]
    load = procstat.loadavg()
    service = start_service(
        "sequence", repository, work / "logs", models=[MODEL],
        extra_args=["--max-sessions", str(opts.sessions), "--session-ttl-seconds", "600"],
    )  # fmt: skip
    try:
        wait_serving(service)
        rng = np.random.default_rng(7)
        vocab = len(spec.sequence.vocabulary)
        print(
            f"lstm/{version} (max_length {max_length}); 1 server process, 1 client thread; "
            f"load average at start {load[0]:.2f} on "
            f"{procstat.cpu_model()}\n"
        )
        print(
            "| length | stream: server CPU us/event | stream: client ms/event (median) "
            f"| stream, {BATCHED} events/message: server CPU us/event "
            "| re-score: server CPU us/event | re-score: client ms/call (median) "
            "| re-score / stream (server CPU) |"
        )
        print("|---|---|---|---|---|---|---|")
        with NNServeClient(service.address, timeout=60) as client:
            warm = [rng.integers(2, vocab, size=8).tolist() for _ in range(20)]
            streaming(client, warm[:4])
            rescoring(client, warm)
            for n in lengths:
                count = max(1, opts.events // n)
                rows = [rng.integers(2, vocab, size=n).tolist() for _ in range(count)]
                s_cpu, s_ms = measure(service, lambda r=rows: streaming(client, r), count * n)  # type: ignore[misc]
                b_cpu, _ = measure(service, lambda r=rows: streaming(client, r, BATCHED), count * n)  # type: ignore[misc]
                calls = max(50, min(400, opts.events // 4))
                windows = [rng.integers(2, vocab, size=n).tolist() for _ in range(calls)]
                r_cpu, r_ms = measure(service, lambda w=windows: rescoring(client, w), calls)  # type: ignore[misc]
                cells = (n, f"{s_cpu:.0f}", f"{s_ms:.2f}", f"{b_cpu:.0f}", f"{r_cpu:.0f}",
                         f"{r_ms:.2f}", f"{r_cpu / s_cpu:.1f}x")  # fmt: skip
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        # Sessions held at once, and what they cost in memory.
        time.sleep(1.0)
        base = rss_mib(service)
        held_before = _open_sessions(service)
        start = time.perf_counter()
        opened, refusal = idle_sessions(service.address, opts.sessions + 1)
        seconds = time.perf_counter() - start
        time.sleep(1.0)
        idle_rss = rss_mib(service)
        held = _open_sessions(service)
        print(
            f"\nidle sessions: asked {opts.sessions + 1}, opened {opened} "
            f"(server holds {held:.0f}, {held_before:.0f} before) in {seconds:.1f} s; "
            f"refused beyond the bound: {refusal or 'none'}"
        )
        per_1000 = (idle_rss - base) / max(1, held - held_before) * 1000
        print(f"server RSS {base:.1f} -> {idle_rss:.1f} MiB: {per_1000:.2f} MiB per 1000 idle")
        service.stop()
        service = start_service(
            "sequence", repository, work / "logs2", models=[MODEL],
            extra_args=["--max-sessions", str(opts.attached + 10)],
        )  # fmt: skip
        wait_serving(service)
        time.sleep(1.0)
        base = rss_mib(service)
        sessions, channels = attached_sessions(service.address, opts.attached)
        time.sleep(1.0)
        attached_rss = rss_mib(service)
        held = _open_sessions(service)
        print(
            f"attached sessions (each on an open Stream call, 4 connections): {held:.0f}; "
            f"server RSS {base:.1f} -> {attached_rss:.1f} MiB: "
            f"{(attached_rss - base) / max(1.0, held) * 1000:.2f} MiB per 1000"
        )
        for s in sessions:
            with contextlib.suppress(NNServeError):
                s.close(end_session=True)
        for c in channels:
            c.close()
    finally:
        service.stop()


def _open_sessions(service: Service) -> float:
    total = 0.0
    for line in service.scrape().splitlines():
        if line.startswith("nnserve_sessions_open{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


if __name__ == "__main__":
    main()
