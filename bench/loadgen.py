"""Closed-loop gRPC load generator in separate processes.

Each load process runs one asyncio loop with grpc.aio and N client coroutines; each
coroutine keeps exactly one request in flight and sends the next as soon as the previous
returns. Requests are pre-serialized bytes and responses stay bytes (no protobuf work per
call; one response per job is parsed and checked). A point's concurrency is split over
the processes; each process opens its own channels (own TCP connections).

With a workload's stream window the requests go over ModelStreamInfer streams instead
(per stream, that many requests in flight, the next sent as each answer arrives): each
request gets a distinct id put before its pre-serialized bytes (which carry none), and an
answer's latency is taken from its id, whatever the order answers come in.

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

from bench.workload import Workload, check_response

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
    workload: Workload
    concurrency: int  # requests in flight in this process
    streams: int  # 0: unary calls; N: N ModelStreamInfer streams carry the requests
    channels: int
    start: float  # monotonic time: completions from here on count
    end: float  # monotonic time: nothing new is sent after this
    offset: int  # first payload index, so processes do not send in lockstep
    timeout_s: float


@dataclass
class Sample:
    """One process's result for one job (ok latencies in seconds)."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: dict[str, int] = field(default_factory=dict)
    error_example: str = ""
    invalid: str | None = None  # what the response check found wrong, if anything
    failure: str = ""  # the job itself failed (no connection, ...)

    def record(self, job: Job, t0: float, t1: float, error: str = "", detail: str = "") -> None:
        """A request sent at t0 and answered at t1, counted when inside the window."""
        if not job.start <= t1 <= job.end:
            return
        if not error:
            self.latencies.append(t1 - t0)
            return
        self.errors[error] = self.errors.get(error, 0) + 1
        self.error_example = self.error_example or f"{error}: {detail}"[:200]


async def _run_job(job: Job) -> Sample:
    import grpc

    sample, wl = Sample(), job.workload
    channels = [grpc.aio.insecure_channel(job.address, options=CHANNEL_OPTIONS)
                for _ in range(job.channels)]  # fmt: skip
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 10)
        except TimeoutError:
            sample.failure = f"cannot connect to {job.address} within 10 s"
            return sample
        stubs = [c.unary_unary(wl.method) for c in channels]  # bytes in, bytes out
        try:
            data = await stubs[0](wl.payloads[0], timeout=job.timeout_s)
            sample.invalid = check_response(wl.method, data, wl.rows_per_request)
        except grpc.aio.AioRpcError as exc:
            sample.invalid = f"{exc.code().name}: {exc.details()}"
        if job.streams:
            await _run_streams(job, channels, sample)
            return sample
        payloads, count, mono = wl.payloads, len(wl.payloads), time.monotonic

        async def client(i: int) -> None:
            stub, k = stubs[i % len(stubs)], job.offset + i
            while (t0 := mono()) < job.end:
                try:
                    await stub(payloads[k % count], timeout=job.timeout_s)
                    sample.record(job, t0, mono())
                except grpc.aio.AioRpcError as exc:
                    sample.record(job, t0, mono(), exc.code().name, str(exc.details()))
                    await asyncio.sleep(ERROR_BACKOFF_S)
                k += job.concurrency

        await asyncio.gather(*(client(i) for i in range(job.concurrency)))
        return sample
    finally:
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


async def _run_streams(job: Job, channels: list[Any], sample: Sample) -> None:
    """Closed loop over ModelStreamInfer streams; an answer with error_message is an error."""
    import grpc

    from protos import grpc_service_pb2 as pb

    mono, payloads = time.monotonic, job.workload.payloads
    streams = max(1, min(job.streams, job.concurrency))
    shares = [job.concurrency // streams + (i < job.concurrency % streams) for i in range(streams)]

    async def stream(i: int, window: int) -> None:
        call = channels[i % len(channels)].stream_stream(STREAM_METHOD)(
            timeout=job.timeout_s + (job.end - mono())
        )
        sent_at: dict[str, float] = {}
        k, n = job.offset + i, 0

        async def send() -> None:
            nonlocal k, n
            rid = f"{i}-{n}"
            sent_at[rid] = mono()
            # The id first: the payloads carry none, and a no-op server finds it at once.
            head = pb.ModelInferRequest(id=rid).SerializeToString()
            await call.write(head + payloads[k % len(payloads)])
            k, n = k + streams, n + 1

        for _ in range(window):
            await send()
        while sent_at:
            data = await call.read()
            if data is grpc.aio.EOF:
                break
            t1 = mono()
            answer = pb.ModelStreamInferResponse.FromString(data)
            t0 = sent_at.pop(answer.infer_response.id, t1)
            error = answer.error_message
            code, _, detail = error.partition(":")
            sample.record(job, t0, t1, code, detail.strip())
            if t1 < job.end:
                await send()
        await call.done_writing()

    await asyncio.gather(*(stream(i, w) for i, w in enumerate(shares) if w))


def _process_main(conn: Connection) -> None:
    """A load process: run jobs from the pipe on one event loop until told to stop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        while (job := conn.recv()) is not None:
            try:
                result = loop.run_until_complete(_run_job(job))
            except Exception as exc:  # report, stay alive for the next job
                result = Sample(failure=f"{type(exc).__name__}: {exc}")
            conn.send(result)
    finally:
        loop.close()


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

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def run(self, address: str, workload: Workload, concurrency: int, *, warmup_s: float,
            duration_s: float, channels: int = 1, timeout_s: float = 30.0,
            at_start: Callable[[], None] | None = None,
            at_end: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
        """Hold `concurrency` requests in flight for warm-up + duration; measure the
        latter. at_start / at_end run in this process at the window's edges."""
        used = max(1, min(len(self._procs), concurrency))
        shares = [concurrency // used + (i < concurrency % used) for i in range(used)]
        start = time.monotonic() + SETUP_S + warmup_s
        end = start + duration_s
        for i, (conn, share) in enumerate(zip(self._conns, shares, strict=False)):
            conn.send(Job(address, workload, share, workload.streams(share), channels, start, end,
                          sum(shares[:i]), timeout_s))  # fmt: skip
        for edge, callback in ((start, at_start), (end, at_end)):
            time.sleep(max(0.0, edge - time.monotonic()))
            if callback:
                callback()
        samples: list[Sample] = []
        for conn, proc in zip(self._conns[:used], self._procs, strict=False):
            give_up = time.monotonic() + timeout_s + 15
            while not conn.poll(0.5):
                if not proc.is_alive():
                    raise RuntimeError(f"load process {proc.name} died (exit code {proc.exitcode})")
                if time.monotonic() > give_up:
                    raise RuntimeError(f"load process {proc.name} did not answer; is it stuck?")
            samples.append(conn.recv())
        if failures := [s.failure for s in samples if s.failure]:
            raise RuntimeError(f"load generation failed: {failures[0]}")
        lat_ms = (
            np.concatenate([np.frombuffer(s.latencies, dtype=np.float64) for s in samples]) * 1e3
        )
        errors: dict[str, int] = {}
        for s in samples:
            for code, n in s.errors.items():
                errors[code] = errors.get(code, 0) + n
        nan = float("nan")
        p50, p90, p99 = np.percentile(lat_ms, [50, 90, 99]) if len(lat_ms) else (nan, nan, nan)
        return {
            "concurrency": concurrency, "duration_s": round(duration_s, 3),
            "requests": len(lat_ms),
            "inferences_per_s": round(len(lat_ms) * workload.rows_per_request / duration_s, 1),
            "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(lat_ms.mean()), 3) if len(lat_ms) else nan,
            "max_ms": round(float(lat_ms.max()), 3) if len(lat_ms) else nan,
            "error_count": sum(errors.values()), "errors": errors,
            "error_example": next((s.error_example for s in samples if s.error_example), ""),
            "response_check": next((s.invalid for s in samples if s.invalid), None) or "ok",
            "client_processes": used, "channels_per_process": channels,
        }  # fmt: skip

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
