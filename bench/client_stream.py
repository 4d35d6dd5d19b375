"""The project's client library, unary against streaming: what one client process gets.

    python -m bench.client_stream [--repository REPO] [--model mlp] [--duration 5]

Starts the classify service for one tabular model, then measures from this process with
`nnserve_client`: the blocking client's `classify_tabular` called from 1 and 8 threads
(one row per call), the asyncio client with 8 and 32 calls in flight, and the blocking
client's `classify_stream` (one `ClassifyStream` call, one row per request, 8 or 32
requests in flight: the next is sent as an answer arrives). Per mode: requests/s, median
and p99 latency (send to answer), the client's and the server's CPU per request (/proc).
Client and server share the machine, as an application and its local server would.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import procstat
from bench.servers import Service, start_service, wait_serving
from contract.model import read_spec, scan
from nnserve_client import NNServeClient
from nnserve_client.aio import AsyncNNServeClient

HEADER = ("client", "mode", "in flight", "requests/s", "p50 ms", "p99 ms", "client us/req",
          "server us/req")  # fmt: skip


def _rows(repository: Path, model: str) -> np.ndarray:
    version = max(scan(repository)[model])
    spec = read_spec(repository, model, version)
    (features,) = spec.goldens[0].inputs.values()
    return np.asarray(features, dtype=np.float32)


class Meter:
    """Latencies and CPU (this process, the server) over one measured mode."""

    def __init__(self, server: Service) -> None:
        self._server = server
        self.latencies: list[float] = []
        self._t0 = self._client0 = self._server0 = 0.0

    def __enter__(self) -> Meter:
        self._t0 = time.monotonic()
        self._client0 = time.process_time()
        self._server0 = procstat.cpu_seconds(self._server.pids())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self._t0
        self.client_cpu = time.process_time() - self._client0
        self.server_cpu = procstat.cpu_seconds(self._server.pids()) - self._server0

    def row(self, client: str, mode: str, in_flight: str) -> tuple[str, ...]:
        n = max(1, len(self.latencies))
        ms = np.percentile(np.asarray(self.latencies) * 1e3, [50, 99]) if self.latencies else [0, 0]
        return (client, mode, in_flight, f"{len(self.latencies) / self.wall:,.0f}",
                f"{ms[0]:.3f}", f"{ms[1]:.3f}", f"{self.client_cpu * 1e6 / n:,.0f}",
                f"{self.server_cpu * 1e6 / n:,.0f}")  # fmt: skip


def _blocking_unary(client: NNServeClient, model: str, rows: np.ndarray, threads: int,
                    seconds: float, meter: Meter) -> None:  # fmt: skip
    end = time.monotonic() + seconds
    lock = threading.Lock()

    def loop(k: int) -> None:
        mine: list[float] = []
        while (t0 := time.monotonic()) < end:
            client.classify_tabular(model, rows[k % len(rows)][None])
            mine.append(time.monotonic() - t0)
            k += 1
        with lock:
            meter.latencies.extend(mine)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _timed_batches(
    rows: np.ndarray, seconds: float, sent: dict[int, float], slots: threading.Semaphore
) -> Iterator[Any]:
    """One row per request until `seconds` pass; each waits for a free slot (closed loop:
    gRPC's sending thread runs this generator, so blocking here holds only the sender)."""
    end = time.monotonic() + seconds
    k = 0
    while True:
        slots.acquire()
        if (now := time.monotonic()) >= end:
            return
        sent[k] = now
        yield rows[k % len(rows)][None]
        k += 1


def _record(meter: Meter, sent: dict[int, float], index: int, result: Any) -> None:
    if isinstance(result, Exception):
        raise result
    meter.latencies.append(time.monotonic() - sent.pop(index))


def _blocking_stream(client: NNServeClient, model: str, rows: np.ndarray, window: int,
                     seconds: float, meter: Meter) -> None:  # fmt: skip
    sent: dict[int, float] = {}
    slots = threading.Semaphore(window)
    batches = _timed_batches(rows, seconds, sent, slots)
    for index, result in client.classify_stream(model, batches):
        _record(meter, sent, index, result)
        slots.release()


async def _aio_unary(address: str, model: str, rows: np.ndarray, calls: int, seconds: float,
                     meter: Meter) -> None:  # fmt: skip
    async with AsyncNNServeClient(address) as client:
        end = time.monotonic() + seconds

        async def loop(k: int) -> None:
            while (t0 := time.monotonic()) < end:
                await client.classify_tabular(model, rows[k % len(rows)][None])
                meter.latencies.append(time.monotonic() - t0)
                k += 1

        await asyncio.gather(*(loop(i) for i in range(calls)))


def _in_loop(coroutine: Callable[..., Any], *args: Any) -> None:
    asyncio.run(coroutine(*args))


def run(repository: Path, model: str, seconds: float, rounds: int) -> list[tuple[str, ...]]:
    rows = _rows(repository, model)
    with tempfile.TemporaryDirectory(prefix="nnserve-client-stream-") as tmp:
        server = start_service("classify", repository, Path(tmp), models=[model])
        try:
            wait_serving(server)
            address = server.address
            with NNServeClient(address, timeout=30) as client:
                modes: list[tuple[str, str, str, Callable[[Meter], None]]] = [
                    *(("blocking", "classify_tabular", str(t),
                       partial(_blocking_unary, client, model, rows, t, seconds))
                      for t in (1, 8)),
                    *(("blocking", "classify_stream", str(w),
                       partial(_blocking_stream, client, model, rows, w, seconds))
                      for w in (8, 32)),
                    *(("asyncio", "classify_tabular", str(c),
                       partial(_in_loop, _aio_unary, address, model, rows, c, seconds))
                      for c in (8, 32)),
                ]  # fmt: skip
                _blocking_unary(client, model, rows, 2, 1.0, Meter(server))  # warm up
                results: dict[int, list[tuple[str, ...]]] = {}
                for r in range(rounds):
                    for i, (kind, mode, in_flight, measure) in enumerate(modes):
                        with Meter(server) as meter:
                            measure(meter)
                        row = meter.row(kind, mode, in_flight)
                        print(f"round {r + 1}/{rounds}: " + "  ".join(row), flush=True)
                        results.setdefault(i, []).append(row)
        finally:
            server.stop()
    return [_median_row(rs) for _, rs in sorted(results.items())]


def _median_row(rows: list[tuple[str, ...]]) -> tuple[str, ...]:
    """Per numeric column, the median over rounds."""
    first = rows[0]
    out = list(first[:3])
    for col in range(3, len(first)):
        values = [float(r[col].replace(",", "")) for r in rows]
        out.append(f"{statistics.median(values):,.{0 if col in (3, 6, 7) else 3}f}")
    return tuple(out)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client_stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="mlp", help="a tabular classify model (default mlp)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per mode (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = p.parse_args(argv)
    rows = run(args.repository, args.model, args.duration, max(1, args.rounds))
    print(f"{args.model}: one row per request; medians of {max(1, args.rounds)} rounds")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
