"""The drain of the grpc.aio front end against a real server process: connected clients
get a GOAWAY early in the drain (while accepted work still runs), a client that keeps
retrying moves on instead of holding the server to its grace period, accepted work
completes, open streams end UNAVAILABLE once it has, and the process exits then.

Prints its figures (times from the signal) so a run with -s shows them.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.inference import full_length_request
from tests.support.metrics import read_metrics
from tests.support.process import server_process

# Grpc.aio's GOAWAY; the native drain is in test_faults and test_lifecycle.
pytestmark = pytest.mark.frontends("aio")

GRACE_SECONDS = 30.0
HEAVY = 24  # full 256-row transformer batches, one inference thread: seconds of work


def _inflight(metrics_url: str) -> float:
    return read_metrics(metrics_url).total("nnserve_inflight_requests")


def test_goaway_early_work_completes_and_the_process_exits_when_done(
    model_repository: Path, tmp_path: Path
) -> None:
    heavy = full_length_request(model_repository, "transformer", 256)
    light = full_length_request(model_repository, "transformer", 1)
    with server_process(
        model_repository, tmp_path, "--service", "sequence", "--models", '["transformer"]',
        "--inference-threads", "1", "--max-batch-size", "256",
        "--drain-grace-seconds", str(GRACE_SECONDS),
    ) as server:  # fmt: skip
        # Accepted work: HEAVY requests, one running, the rest queued.
        work_channel = server.channel()
        work = pb_grpc.GRPCInferenceServiceStub(work_channel)
        work_done: list[tuple[float, str]] = []
        lock = threading.Lock()

        def send_heavy() -> None:
            try:
                work.ModelInfer(heavy, timeout=60)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                work_done.append((time.monotonic(), code))

        senders = [threading.Thread(target=send_heavy) for _ in range(HEAVY)]
        for t in senders:
            t.start()
        deadline = time.monotonic() + 30
        while _inflight(server.metrics_url) < HEAVY:
            assert time.monotonic() < deadline, "the heavy requests never all arrived"
            time.sleep(0.02)

        # A connected client that sends nothing: when does it learn of the drain?
        idle_channel = server.channel()
        health = health_pb2_grpc.HealthStub(idle_channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        left_ready: list[float] = []

        def on_state(state: grpc.ChannelConnectivity) -> None:
            if state is not grpc.ChannelConnectivity.READY and not left_ready:
                left_ready.append(time.monotonic())

        idle_channel.subscribe(on_state, try_to_connect=False)

        # An open stream that sends nothing.
        release = threading.Event()

        def nothing() -> Iterator[pb.ModelInferRequest]:
            release.wait(60)
            yield from ()

        stream_channel = server.channel()
        stream = pb_grpc.GRPCInferenceServiceStub(stream_channel).ModelStreamInfer(
            nothing(), timeout=60
        )
        stream_end: list[tuple[float, str]] = []

        def watch_stream() -> None:
            try:
                for _ in stream:
                    pass
                stream_end.append((time.monotonic(), "OK"))
            except grpc.RpcError as exc:
                stream_end.append((time.monotonic(), exc.code().name))

        watcher = threading.Thread(target=watch_stream)
        watcher.start()
        time.sleep(0.3)

        signalled = time.monotonic()
        server.terminate()

        # A client that retries every refusal on its own connection, 10 ms apart.
        retries: collections.Counter[str] = collections.Counter()
        moved_on: list[float] = []

        def retry() -> None:
            with server.channel() as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                while time.monotonic() < signalled + GRACE_SECONDS:
                    try:
                        stub.ModelInfer(light, timeout=10)
                        retries["OK"] += 1
                    except grpc.RpcError as exc:
                        draining = "draining" in (exc.details() or "")
                        retries[exc.code().name + (" draining" if draining else "")] += 1
                        if exc.code() is grpc.StatusCode.UNAVAILABLE and not draining:
                            moved_on.append(time.monotonic())  # GOAWAY'd, port closed
                            return
                    time.sleep(0.01)

        retrier = threading.Thread(target=retry)
        retrier.start()
        for t in senders:
            t.join(GRACE_SECONDS + 10)
        retrier.join(GRACE_SECONDS + 10)
        watcher.join(GRACE_SECONDS + 10)
        exit_code = server.process.wait(GRACE_SECONDS + 10)
        exited = time.monotonic()
        release.set()
        for channel in (work_channel, idle_channel, stream_channel):
            channel.close()

    last_work = max(at for at, _ in work_done)
    codes = collections.Counter(code for _, code in work_done)
    print(
        f"\ndrain: accepted work {dict(codes)} done at +{last_work - signalled:.2f}s; "
        f"idle connection left READY at +{left_ready[0] - signalled:.2f}s; "
        f"retrying client {dict(retries)}, moved on at +{moved_on[0] - signalled:.2f}s; "
        f"idle stream {stream_end[0][1]} at +{stream_end[0][0] - signalled:.2f}s; "
        f"exit {exit_code} at +{exited - signalled:.2f}s (grace {GRACE_SECONDS:g}s)"
    )
    assert exit_code == 0, server.log()[-2000:]
    assert codes == {"OK": HEAVY}  # every accepted request completed
    assert last_work - signalled > 1.5, "too little work to tell early from late"
    # GOAWAY early: the idle client and the retrying one learn of it while work runs.
    assert left_ready and left_ready[0] - signalled < 1.5
    assert left_ready[0] < last_work
    assert moved_on and moved_on[0] - signalled < 2.0
    # Nothing arriving during the drain got anything but UNAVAILABLE, except at most the
    # one call the retrying client had on the wire as the GOAWAY went out (gRPC core
    # cancels such a call; docs/operations.md, "Draining").
    assert set(retries) <= {"UNAVAILABLE draining", "UNAVAILABLE", "CANCELLED"}, retries
    assert retries["CANCELLED"] <= 1, retries
    # The open stream ends once the work is done, UNAVAILABLE, and the process exits.
    assert stream_end == [(stream_end[0][0], "UNAVAILABLE")]
    assert stream_end[0][0] >= last_work - 0.05
    assert exited - last_work < 3.0
