"""Process lifecycle: one server with signal handling, or several worker processes that
share the gRPC port (SO_REUSEPORT) while the parent serves their aggregated metrics.

Workers are started with `spawn` and target functions of this importable module (a
package's __main__ cannot be re-imported by spawned children).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile

from services.ops.logs import configure_logging
from services.settings import Settings

log = logging.getLogger("services")


async def serve(settings: Settings) -> None:
    from services.rpc.server import build_server  # after logging and env are set up

    server = build_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start(wait_for_models=False)
    await stop.wait()
    log.info("signal received: draining (grace %.1fs)", settings.drain_grace_seconds)
    await server.stop()


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT on the configured event loop (asyncio or uvloop)."""
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(settings))
    else:
        asyncio.run(serve(settings))


def _worker(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # Only the parent serves /metrics (aggregated across workers) and writes the ports file.
    run(settings.model_copy(update={"metrics_port": -1, "ports_file": None}))


def serve_workers(settings: Settings) -> None:
    """Several processes share the gRPC port (SO_REUSEPORT); the parent aggregates metrics."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics_dir = tempfile.mkdtemp(prefix="nnserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if settings.grpc_port == 0:
        sys.exit("--workers > 1 needs a fixed --grpc-port (workers must share it)")
    if settings.http_port == 0:
        sys.exit("--workers > 1 needs a fixed --http-port, or -1 (workers must share it)")
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_worker, args=(settings,), name=f"worker-{i}")
        for i in range(settings.workers)
    ]
    for w in workers:
        w.start()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    http = None
    if settings.metrics_port is not None and settings.metrics_port >= 0:
        http, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    if settings.ports_file is not None:
        from services.rpc.server import write_ports_file

        metrics_port = http.server_address[1] if http is not None else None
        http_port = settings.http_port if settings.http_port and settings.http_port > 0 else None
        write_ports_file(settings.ports_file, settings.grpc_port or 0, metrics_port, http_port)

    def forward(signum: int, _frame: object) -> None:
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for w in workers:
        w.join()
        code = code or (w.exitcode or 0)
    if http is not None:
        http.shutdown()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(code)
