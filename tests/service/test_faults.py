"""Fault tests against real server processes: SIGTERM under load, idle connections.

Each test prints its figures (requests sent, outcomes by code, drain time) so a run with
`-s` shows them.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.inference import full_length_request
from tests.support.process import server_process

GRACE_SECONDS = 10.0
CLIENTS = 32


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    details: str


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_sigterm_under_load_completes_accepted_work(
    model_repository: Path, tmp_path: Path, event_loop: str
) -> None:
    """32 clients loop until their first failure; SIGTERM arrives mid-load. Every request
    the server had accepted completes OK, later ones get UNAVAILABLE, none hangs or ends
    CANCELLED, and the process exits 0 within the grace period."""
    request = full_length_request(model_repository, "transformer", 8)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    with server_process(
        model_repository, tmp_path, "--service", "sequence", "--models", '["transformer"]',
        "--drain-grace-seconds", str(GRACE_SECONDS), "--inference-threads", "1",
        "--event-loop", event_loop,
    ) as server:  # fmt: skip

        def client() -> None:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                while True:
                    start = time.monotonic()
                    try:
                        stub.ModelInfer(request, timeout=30)
                        code, details = grpc.StatusCode.OK, ""
                    except grpc.RpcError as exc:
                        code, details = exc.code(), exc.details() or ""
                    with lock:
                        outcomes.append(Outcome(start, time.monotonic(), code, details))
                    if code is not grpc.StatusCode.OK:
                        return

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        signalled = time.monotonic()
        server.terminate()
        for t in threads:
            t.join(GRACE_SECONDS + 5)
        assert not any(t.is_alive() for t in threads), "a client hung"
        exit_code = server.process.wait(GRACE_SECONDS + 5)
        exited = time.monotonic()

    codes = collections.Counter(o.code.name for o in outcomes)
    finished_after = sum(
        1 for o in outcomes if o.code is grpc.StatusCode.OK and o.ended > signalled
    )
    print(
        f"\nSIGTERM under load ({event_loop}): {len(outcomes)} requests, {dict(codes)}, "
        f"{finished_after} completed OK after the signal, exit {exit_code} "
        f"{exited - signalled:.2f}s after the signal"
    )
    assert exit_code == 0, server.log()[-2000:]
    assert exited - signalled < GRACE_SECONDS
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["UNAVAILABLE"] == CLIENTS  # each client stops at its first refusal
    # Requests in the server before the signal (sent well before it) all completed OK.
    early = [o for o in outcomes if o.started < signalled - 0.05]
    assert early and all(o.code is grpc.StatusCode.OK for o in early)
    assert finished_after >= 1  # in-flight work finished during the drain
    assert "draining" in server.log()


def test_hundreds_of_idle_streams_do_not_slow_health(classify_server) -> None:  # type: ignore[no-untyped-def]
    """300 connections, each holding an open ModelStreamInfer stream that sends nothing:
    health still answers quickly on a fresh connection."""
    release = threading.Event()

    def idle() -> Iterator[pb.ModelInferRequest]:
        release.wait(60)
        yield from ()

    channels = [grpc.insecure_channel(classify_server.address) for _ in range(300)]
    streams = []
    try:
        for channel in channels:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            streams.append(stub.ModelStreamInfer(idle(), timeout=60))
        time.sleep(0.5)
        with grpc.insecure_channel(classify_server.address) as fresh:
            health = health_pb2_grpc.HealthStub(fresh)
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connect
            times = []
            for _ in range(20):
                start = time.perf_counter()
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                times.append(time.perf_counter() - start)
                assert status == health_pb2.HealthCheckResponse.SERVING
        times.sort()
        print(f"\nhealth with 300 idle streams: median {times[10] * 1e3:.2f} ms")
        assert times[10] < 0.5
    finally:
        release.set()
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()
