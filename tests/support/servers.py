"""Real nnserve servers for the service tests, and the session fixtures that share them.

`running_server()` runs one (build_server, 127.0.0.1, port 0) on its own event loop in a
background thread, so tests can use plain synchronous gRPC clients against it. The
fixtures (registered by tests/conftest.py, so every level can ask for them; nothing is
built until a test does):

- model_repository: the five reference models, trained briefly and exported in this
  session with the real pipeline (training.api + export.api, short dry-run training:
  the service tests need real graphs and goldens, not accuracy);
- scratch_repository: a private copy a test may break;
- frontend: the front end (NNSERVE_FRONTEND) of every server the test starts, in this
  process or as a child process; tests/service runs each test once per front end;
- classify_server, sequence_server: one running server per service and front end;
  servers: model name -> the server that serves it.

`hold_inference_thread()` keeps one of a server's inference threads busy until the test
lets it go, so that requests queue behind it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from opentelemetry.sdk.trace.export import SpanExporter

from services.rpc.server import NNServeServer, build_server
from services.settings import Settings
from tests.support.models import ALL_MODELS, CLASSIFY_MODELS, SEQUENCE_MODELS

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


@contextmanager
def hold_inference_thread(
    server: RunningServer, timeout: float = 10.0
) -> Iterator[threading.Event]:
    """One of the server's inference threads runs a job that waits on the event yielded:
    with inference_threads=1 nothing else runs until the test sets it, the block ends,
    or `timeout` seconds pass. Returns once the job holds the thread."""
    gate, held = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        held.set()
        gate.wait(timeout)

    server.server.threads.submit(hold, None, server.loop, lambda result, error: None)
    assert held.wait(5), "the inference thread was not taken"
    try:
        yield gate
    finally:
        gate.set()


# ------------------------------------------------------------------ session fixtures


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five reference models, trained briefly and exported (parity gate included)."""
    from export.api import export_model
    from training.api import train

    runs = tmp_path_factory.mktemp("runs")
    repository = tmp_path_factory.mktemp("model_repository")
    for name in ALL_MODELS:
        result = train(name, dry_run=True, runs_dir=runs, progress=False)
        export_model(result.checkpoint, repository)
    return repository


@pytest.fixture
def scratch_repository(model_repository: Path, tmp_path: Path) -> Path:
    """A private copy tests may break (corrupt files, add versions)."""
    target = tmp_path / "model_repository"
    shutil.copytree(model_repository, target)
    return target


FRONTENDS = ("native", "aio")
FRONTEND_ENV = "NNSERVE_FRONTEND"


@pytest.fixture(scope="session")
def frontend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The front end of the servers a test starts: set in the environment, which Settings
    reads here and server processes inherit (parametrised by tests/service/conftest.py)."""
    name: str = getattr(request, "param", FRONTENDS[0])
    previous = os.environ.get(FRONTEND_ENV)
    os.environ[FRONTEND_ENV] = name
    try:
        yield name
    finally:
        if previous is None:
            os.environ.pop(FRONTEND_ENV, None)
        else:
            os.environ[FRONTEND_ENV] = previous


@pytest.fixture(scope="session")
def classify_server(model_repository: Path, frontend: str) -> Iterator[RunningServer]:
    with running_server(make_settings(model_repository, service="classify")) as server:
        yield server


@pytest.fixture(scope="session")
def sequence_server(model_repository: Path, frontend: str) -> Iterator[RunningServer]:
    with running_server(make_settings(model_repository, service="sequence")) as server:
        yield server


@pytest.fixture(scope="session")
def servers(
    classify_server: RunningServer, sequence_server: RunningServer
) -> dict[str, RunningServer]:
    """Model name -> the running server that serves it."""
    return {
        **{m: classify_server for m in CLASSIFY_MODELS},
        **{m: sequence_server for m in SEQUENCE_MODELS},
    }
