"""uvicorn serving the REST app on the server's own event loop: no thread, no process.

uvicorn.Server.serve() would install its own SIGTERM/SIGINT handlers (in the main
thread) and so take the drain away from services/process.py; this runs the same steps
serve() does, without them: startup on a socket bound here (port 0 works, SO_REUSEPORT
with several workers), uvicorn's ticker (Date header, exit flag), and on stop its
graceful shutdown: close the listener, close idle keep-alive connections, let requests in
progress finish (up to the grace left), then cancel what is still running.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from services.ops.tls import ContextReloader, TLSFiles

log = logging.getLogger(__name__)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: a free one)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # several worker processes share the port, as gRPC's does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as err:
        raise RuntimeError(f"cannot bind HTTP on {host}:{port}: {err}") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: TLSFiles | None = None,
        limit_concurrency: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._reuse_port = reuse_port
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            http="h11",  # pure Python, strict parsing; headers bounded at 16 KiB
            ws="none",
            log_config=None,  # keep the process's logging as configured
            access_log=False,  # nnserve_http_requests_total counts every request instead
            proxy_headers=False,  # the client address is never used
            server_header=False,
            # Connections plus running requests beyond this get 503 from uvicorn itself.
            limit_concurrency=limit_concurrency,
        )
        # TLS as on the gRPC port (same files, client certificates when a CA is set),
        # re-read when the files change; unusable files stop the server here.
        self.certificates = ContextReloader(tls) if tls is not None else None
        self.server = uvicorn.Server(self.config)
        self._socket: socket.socket | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        sock = bind(self.host, self.port, self._reuse_port)
        self._socket = sock
        config = self.config
        config.load()  # the protocol class
        if self.certificates is not None:
            config.ssl = self.certificates.context
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[sock])
        self.port = sock.getsockname()[1]
        self._ticker = asyncio.create_task(self.server.main_loop(), name="http-ticker")
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, finish requests in progress for up to `grace` seconds."""
        if self._ticker is None:
            return
        self.server.should_exit = True
        await self._ticker
        self._ticker = None
        # uvicorn cancels the requests still running after this long (it hands the value
        # to asyncio.wait_for, which takes fractions of a second too).
        self.config.timeout_graceful_shutdown = max(0.1, grace)  # type: ignore[assignment]
        await self.server.shutdown(sockets=[self._socket] if self._socket else None)
        self._socket = None
