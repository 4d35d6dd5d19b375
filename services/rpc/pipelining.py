"""Many requests on one call: what ModelStreamInfer, ClassifyStream and SequenceStream share.

Requests read from a stream run concurrently, so they batch with each other and with
other calls; answers are written as they finish. At most `window` requests are read and
not yet answered (running, or waiting to be written): then reading stops, and gRPC flow
control holds a client that sends without reading. A request that fails answers with its
error and the call goes on; a message that ends the request stream (e.g. one that cannot
be decoded) ends the call with its status after the answers already due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from services.errors import InvalidInput, status_of

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

MAX_ID_CHARS = 256  # request ids echoed in answers


def check_id(request_id: str) -> None:
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidInput(f"request id longer than {MAX_ID_CHARS} characters")


def failure_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status one failed request of a stream answers with (INTERNAL ones are logged)."""
    code, message = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("stream request failed", exc_info=exc)
    return code, message


async def pipelined(
    requests: AsyncIterator[Req],
    answer: Callable[[Req], Awaitable[Resp]],
    failed: Callable[[Req, Exception], Resp],
    window: int,
) -> AsyncIterator[Resp]:
    """Answers to `requests` in the order they finish; `failed` builds a failed request's
    answer."""
    done: asyncio.Queue[Resp | None] = asyncio.Queue()
    slots = asyncio.Semaphore(window)
    pending: set[asyncio.Task[None]] = set()
    ended: list[Exception] = []  # what ended the request stream early, if anything

    async def one(request: Req) -> None:
        try:
            response = await answer(request)
        except Exception as exc:
            response = failed(request, exc)
        done.put_nowait(response)

    async def reader() -> None:
        try:
            async for request in requests:
                await slots.acquire()  # released as its answer is taken to be written
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        except Exception as exc:
            ended.append(exc)
        finally:
            done.put_nowait(None)

    read_task = asyncio.create_task(reader())
    try:
        while (item := await done.get()) is not None:
            slots.release()
            yield item
        if ended:
            raise ended[0]
    finally:
        read_task.cancel()
        for task in pending:
            task.cancel()
