"""Refusals that happen before a method runs are still counted and logged (throttled):
the concurrent-call limit, calls gRPC core ends before their handler (metadata over its
hard limit), unknown methods. docs/metrics.md lists those the server cannot see."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics import read_metrics
from tests.support.servers import RunningServer, make_settings, running_server

Code = grpc.StatusCode


def _metric(server: RunningServer, name: str, **labels: str) -> float:
    return read_metrics(server).total(name, **labels)


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


# grpc.aio's refusals (with the native front end, metadata over the limit is refused by
# pygrpc-native as HTTP 431, unseen by the server: docs/metrics.md).
@pytest.mark.frontends("aio")
def test_refusals_before_the_method_runs_are_counted_and_logged(
    scratch_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(scratch_repository, models=["mlp"], max_concurrent_rpcs=3)
    with running_server(settings) as server, server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        # max_concurrent_rpcs: three open streams hold every slot; a fourth call is
        # refused, and (unlike grpc.aio's own limit) counted like any other outcome.
        release = threading.Event()

        def nothing() -> Iterator[pb.ModelInferRequest]:
            release.wait(30)
            yield from ()

        streams = [stub.ModelStreamInfer(nothing(), timeout=30) for _ in range(3)]
        _eventually(lambda: server.server.interceptor.gate.active == 3)
        with pytest.raises(grpc.RpcError) as err:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        assert "(max_concurrent_rpcs)" in (err.value.details() or "")
        assert _metric(server, "nnserve_refusals_total", reason="max_concurrent_rpcs") == 1
        handled = _metric(
            server, "grpc_server_handled_total", grpc_method="ServerLive",
            grpc_code="RESOURCE_EXHAUSTED",
        )  # fmt: skip
        assert handled == 1
        release.set()
        for stream in streams:
            list(stream)
        _eventually(lambda: server.server.interceptor.gate.active == 0)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live

        # Metadata over gRPC core's hard limit (16 KiB): core refuses the call after
        # routing it, before its handler; the server counts it and logs once per 10 s.
        caplog.set_level(logging.INFO, logger="services.rpc.interceptor")
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                stub.ServerLive(
                    pb.ServerLiveRequest(), timeout=5, metadata=(("x-big", "a" * 20_000),)
                )
            assert err.value.code() == Code.RESOURCE_EXHAUSTED
            assert "metadata size exceeds" in (err.value.details() or "")
        _eventually(
            lambda: _metric(server, "nnserve_refusals_total", reason="ended_before_handler") == 3
        )
        lines = [r for r in caplog.records if "ended before its handler ran" in r.getMessage()]
        assert len(lines) == 1  # throttled: one line, the others held back

        # An unknown method: UNIMPLEMENTED from gRPC, counted, the path cut in the log.
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/x.Y/" + "z" * 5000)(b"", timeout=5)
        assert err.value.code() == Code.UNIMPLEMENTED
        assert _metric(server, "nnserve_refusals_total", reason="unknown_method") == 1
        unknown = [r.getMessage() for r in caplog.records if "unknown method" in r.getMessage()]
        assert len(unknown) == 1 and len(unknown[0]) < 200
