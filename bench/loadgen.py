"""Closed-loop gRPC load generator in separate processes.

Each load process runs one asyncio loop with grpc.aio and N client coroutines; each
coroutine keeps exactly one request in flight and sends the next as soon as the previous
returns. Requests are pre-serialized bytes and responses stay bytes (no protobuf work per
call; one response per job is parsed and checked). A point's concurrency is split over
the processes; each process opens its own channels (own TCP connections).

With `streams` > 0 the requests go over that many ModelStreamInfer streams instead (per
stream, concurrency / streams requests in flight, the next sent as each answer arrives):
each request gets a distinct id put before its pre-serialized bytes (which carry none),
and an answer's latency is taken from its id, whatever the order answers come in.

Timing uses time.monotonic() (CLOCK_MONOTONIC, shared by all processes): a request
counts when it completes inside [start, end]; its latency is measured around the await.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

CHANNEL_OPTIONS = [
    # Own subchannel pool: every channel is its own TCP connection (spreads load over
    # SO_REUSEPORT server workers, and over server-side per-connection work).
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
SETUP_S = 0.3  # time given to processes to connect before warm-up starts
ERROR_BACKOFF_S = 0.001  # after a failed call, so a dead server does not spin the loop


@dataclass(frozen=True)
class Job:
    address: str
    method: str
    payloads: tuple[bytes, ...]
    concurrency: int  # requests in flight in this process
    channels: int
    start: float  # monotonic time: completions from here on count
    end: float  # monotonic time: nothing new is sent after this
    offset: int  # first payload index, so processes do not send in lockstep
    timeout_s: float
    rows: int
    check: Callable[[str, bytes, int], str | None] | None = None  # response check
    streams: int = 0  # 0: unary calls; N: N ModelStreamInfer streams carry the requests


@dataclass
class Sample:
    """One process's result for one job (ok latencies in seconds)."""

    latencies: bytes = b""  # float64 array
    errors: dict[str, int] = field(default_factory=dict)
    error_example: str = ""
    sent: int = 0
    invalid: str | None = None  # what the response check found wrong, if anything
    failure: str = ""  # the job itself failed (no connection, ...)


async def _run_job(job: Job) -> Sample:
    import grpc

    sample = Sample()
    channels = [
        grpc.aio.insecure_channel(job.address, options=CHANNEL_OPTIONS) for _ in range(job.channels)
    ]
    try:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.channel_ready() for c in channels)), timeout=10
            )
        except TimeoutError:
            sample.failure = f"cannot connect to {job.address} within 10 s"
            return sample
        stubs = [c.unary_unary(job.method) for c in channels]  # bytes in, bytes out
        if job.check is not None:
            try:
                data = await stubs[0](job.payloads[0], timeout=job.timeout_s)
                sample.invalid = job.check(job.method, data, job.rows)
            except grpc.aio.AioRpcError as exc:
                sample.invalid = f"{exc.code().name}: {exc.details()}"
        if job.streams:
            return await _run_streams(job, channels, sample)
        latencies = array("d")
        errors: dict[str, int] = {}
        sent = [0]
        start, end = job.start, job.end
        payloads = job.payloads
        count = len(payloads)
        mono = time.monotonic

        async def client(i: int) -> None:
            stub = stubs[i % len(stubs)]
            k = job.offset + i
            n = 0
            while True:
                t0 = mono()
                if t0 >= end:
                    break
                try:
                    await stub(payloads[k % count], timeout=job.timeout_s)
                    t1 = mono()
                    if start <= t1 <= end:
                        latencies.append(t1 - t0)
                except grpc.aio.AioRpcError as exc:
                    t1 = mono()
                    if start <= t1 <= end:
                        code = exc.code().name
                        errors[code] = errors.get(code, 0) + 1
                        if not sample.error_example:
                            sample.error_example = f"{code}: {exc.details()}"
                    await asyncio.sleep(ERROR_BACKOFF_S)
                k += job.concurrency
                n += 1
            sent[0] += n

        await asyncio.gather(*(client(i) for i in range(job.concurrency)))
        sample.latencies = latencies.tobytes()
        sample.errors = errors
        sample.sent = sent[0]
        return sample
    finally:
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


async def _run_streams(job: Job, channels: list[Any], sample: Sample) -> Sample:
    """Closed loop over ModelStreamInfer streams; an answer with error_message is an error."""
    import grpc

    from protos import grpc_service_pb2 as pb

    latencies = array("d")
    errors: dict[str, int] = {}
    sent = [0]
    start, end = job.start, job.end
    mono = time.monotonic
    payloads, count = job.payloads, len(job.payloads)
    streams = max(1, min(job.streams, job.concurrency))
    shares = [job.concurrency // streams + (i < job.concurrency % streams) for i in range(streams)]

    async def stream(i: int, window: int) -> None:
        call = channels[i % len(channels)].stream_stream(STREAM_METHOD)(
            timeout=job.timeout_s + (end - mono())
        )
        sent_at: dict[str, float] = {}
        k = job.offset + i
        n = 0

        async def send() -> None:
            nonlocal k, n
            rid = f"{i}-{n}"
            sent_at[rid] = mono()
            # The id first: the payloads carry none, and a no-op server finds it at once.
            await call.write(pb.ModelInferRequest(id=rid).SerializeToString() + payloads[k % count])
            k += streams
            n += 1

        for _ in range(window):
            await send()
        while sent_at:
            data = await call.read()
            if data is grpc.aio.EOF:
                break
            t1 = mono()
            answer = pb.ModelStreamInferResponse.FromString(data)
            t0 = sent_at.pop(answer.infer_response.id, t1)
            if start <= t1 <= end:
                if answer.error_message:
                    code = answer.error_message.partition(":")[0]
                    errors[code] = errors.get(code, 0) + 1
                    if not sample.error_example:
                        sample.error_example = answer.error_message[:200]
                else:
                    latencies.append(t1 - t0)
            if t1 < end:
                await send()
        await call.done_writing()
        sent[0] += n

    await asyncio.gather(*(stream(i, w) for i, w in enumerate(shares) if w))
    sample.latencies = latencies.tobytes()
    sample.errors = errors
    sample.sent = sent[0]
    return sample


def _process_main(conn: Connection) -> None:
    """A load process: run jobs from the pipe on one event loop until told to stop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        while True:
            job = conn.recv()
            if job is None:
                break
            try:
                result = loop.run_until_complete(_run_job(job))
            except Exception as exc:  # report, stay alive for the next job
                result = Sample(failure=f"{type(exc).__name__}: {exc}")
            conn.send(result)
    finally:
        loop.close()


@dataclass
class PointResult:
    """Merged result of one closed-loop point, before server-side figures are added."""

    concurrency: int
    duration_s: float
    requests: int
    latencies_s: np.ndarray
    errors: dict[str, int]
    error_example: str
    invalid: str | None
    processes: int
    channels: int
    sent: int

    def summary(self, rows_per_request: int) -> dict[str, Any]:
        lat_ms = self.latencies_s * 1e3
        pct = np.percentile(lat_ms, [50, 90, 99]) if len(lat_ms) else [float("nan")] * 3
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "inferences_per_s": round(self.requests * rows_per_request / self.duration_s, 1),
            "p50_ms": round(float(pct[0]), 3),
            "p90_ms": round(float(pct[1]), 3),
            "p99_ms": round(float(pct[2]), 3),
            "mean_ms": round(float(lat_ms.mean()), 3) if len(lat_ms) else float("nan"),
            "max_ms": round(float(lat_ms.max()), 3) if len(lat_ms) else float("nan"),
            "error_count": sum(self.errors.values()),
            "errors": dict(self.errors),
            "error_example": self.error_example,
            "response_check": self.invalid or "ok",
            "client_processes": self.processes,
            "channels_per_process": self.channels,
        }


class LoadGenerator:
    """A pool of load processes, started once and reused for every point."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no inherited gRPC state
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(max(1, processes)):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(child,), name=f"loadgen-{i}")
            proc.daemon = True
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def processes(self) -> int:
        return len(self._procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def run(
        self,
        address: str,
        method: str,
        payloads: tuple[bytes, ...],
        concurrency: int,
        *,
        warmup_s: float,
        duration_s: float,
        channels: int = 1,
        processes: int | None = None,
        timeout_s: float = 30.0,
        rows: int = 1,
        streams: int = 0,
        check: Callable[[str, bytes, int], str | None] | None = None,
        at_start: Callable[[], None] | None = None,
        at_end: Callable[[], None] | None = None,
    ) -> PointResult:
        """Hold `concurrency` requests in flight for warm-up + duration; measure the latter.

        at_start / at_end run in this process at the window's edges (CPU readings).
        """
        used = max(1, min(processes or self.processes, self.processes, concurrency))
        shares = [concurrency // used + (1 if i < concurrency % used else 0) for i in range(used)]
        start = time.monotonic() + SETUP_S + warmup_s
        end = start + duration_s
        offset = 0
        for conn, share in zip(self._conns, shares, strict=False):
            conn.send(
                Job(
                    address,
                    method,
                    payloads,
                    share,
                    channels,
                    start,
                    end,
                    offset,
                    timeout_s,
                    rows,
                    check,
                    streams,
                )
            )
            offset += share
        time.sleep(max(0.0, start - time.monotonic()))
        if at_start:
            at_start()
        time.sleep(max(0.0, end - time.monotonic()))
        if at_end:
            at_end()
        samples: list[Sample] = []
        for conn, proc in zip(self._conns[:used], self._procs, strict=False):
            give_up = time.monotonic() + timeout_s + 15
            while not conn.poll(0.5):
                if not proc.is_alive():
                    raise RuntimeError(f"load process {proc.name} died (exit code {proc.exitcode})")
                if time.monotonic() > give_up:
                    raise RuntimeError(f"load process {proc.name} did not answer; is it stuck?")
            samples.append(conn.recv())
        failures = [s.failure for s in samples if s.failure]
        if failures:
            raise RuntimeError(f"load generation failed: {failures[0]}")
        latencies = np.concatenate([np.frombuffer(s.latencies, dtype=np.float64) for s in samples])
        errors: dict[str, int] = {}
        for s in samples:
            for code, n in s.errors.items():
                errors[code] = errors.get(code, 0) + n
        return PointResult(
            concurrency=concurrency,
            duration_s=duration_s,
            requests=len(latencies),
            latencies_s=latencies,
            errors=errors,
            error_example=next((s.error_example for s in samples if s.error_example), ""),
            invalid=next((s.invalid for s in samples if s.invalid), None),
            processes=used,
            channels=channels,
            sent=sum(s.sent for s in samples),
        )

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self._procs.clear()
        self._conns.clear()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
