"""Run a real nnserve server (build_server, 127.0.0.1, port 0) on its own event loop in a
background thread, so tests can use plain synchronous gRPC clients against it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from opentelemetry.sdk.trace.export import SpanExporter

from services.rpc.server import NNServeServer, build_server
from services.settings import Settings

T = TypeVar("T")


@dataclass
class RunningServer:
    server: NNServeServer
    loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)


def make_settings(repository: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "repository": repository,
        "host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "drain_grace_seconds": 5.0,
    }
    base.update(overrides)
    return Settings(**base)


@contextmanager
def running_server(
    settings: Settings, wait_for_models: bool = True, span_exporter: SpanExporter | None = None
) -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="nnserve-test-loop", daemon=True)
    thread.start()

    async def create() -> NNServeServer:
        server = build_server(settings, span_exporter=span_exporter)
        await server.start(wait_for_models=wait_for_models)
        return server

    server = asyncio.run_coroutine_threadsafe(create(), loop).result(120)
    running = RunningServer(server, loop)
    try:
        yield running
    finally:
        running.call(server.stop(grace=2.0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
