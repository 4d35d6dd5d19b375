"""A call whose client deadline has passed ends unanswered (services/rpc/interceptor.py).

gRPC core cancels such a call, so a status sent on it fails, and grpcio 1.81's aio server
leaks each failed batch (grpc/grpc#43360): the accounting must count the outcome and
not send it. A leak of a few hundred bytes per call cannot be seen from a client, so
these tests run the interceptor's unary wrapper with a context that records what the
wrapper asks of it (the one thing a real server would not show)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest

from services.errors import DeadlineExpired, InvalidInput, ServingError
from services.ops.calls import CallCounter
from services.ops.metrics import Metrics
from services.rpc.accounting import MethodAccount
from services.rpc.interceptor import _Gate, _unary
from tests.support.metrics import Metrics as Scraped

METHOD = "/inference.GRPCInferenceService/ModelInfer"


class RecordingContext:
    """The part of grpc.aio.ServicerContext the accounting uses; records abort()."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def code(self) -> grpc.StatusCode | None:
        return self.aborted[0] if self.aborted else None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError(details)


def _call(error: ServingError, remaining: float | None) -> tuple[RecordingContext, Any, Metrics]:
    """Run one unary call whose handler raises `error`; (context, what it raised, metrics)."""
    metrics = Metrics()
    account = MethodAccount(metrics, "unary", METHOD, None, CallCounter())
    gate = _Gate(10, metrics.refusals)

    async def handler(request: object, context: object) -> object:
        raise error

    handle = _unary(handler, account, None, gate)
    context = RecordingContext(remaining)

    async def run() -> BaseException | None:
        try:
            await handle(object(), context)
        except BaseException as exc:
            return exc
        return None

    return context, asyncio.run(run()), metrics


def _handled(metrics: Metrics, code: str) -> float:
    scraped = Scraped.parse(generate_latest(metrics.registry).decode())
    return scraped.total("grpc_server_handled_total", grpc_method="ModelInfer", grpc_code=code)


def test_a_call_past_its_deadline_is_counted_and_not_answered() -> None:
    context, raised, metrics = _call(DeadlineExpired("deadline passed while queued"), 0.0)
    assert context.aborted is None  # no status sent on a call core has cancelled
    assert isinstance(raised, asyncio.CancelledError)  # grpc.aio ends it without a batch
    assert _handled(metrics, "DEADLINE_EXCEEDED") == 1


@pytest.mark.parametrize("remaining", [5.0, None])
def test_a_call_with_time_left_or_no_deadline_gets_its_status(remaining: float | None) -> None:
    for error, code in ((DeadlineExpired("queued too long"), grpc.StatusCode.DEADLINE_EXCEEDED),
                        (InvalidInput("bad shape"), grpc.StatusCode.INVALID_ARGUMENT)):  # fmt: skip
        context, raised, metrics = _call(error, remaining)
        assert context.aborted is not None and context.aborted[0] is code
        assert isinstance(raised, grpc.aio.AbortError)
        assert _handled(metrics, code.name) == 1
