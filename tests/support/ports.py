"""Ports for the few cases where a process cannot bind port 0 itself.

Everything the tests start binds port 0 and reports the port it got (nnserve through its
ports file, Envoy on its admin API, Prometheus in its log, Docker through
`docker compose port`): a port picked as "free" before the process binds it can be taken
by another process in between, and the tests share the machine. A port here is held by
a socket of the test for as long as it is needed, so nothing else can take it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def shared_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port for `python -m services --workers N`, the one server that cannot bind port 0:
    its workers must all bind the same fixed port (services/process.py refuses 0). This
    socket binds it first with SO_REUSEPORT and stays open, not listening (so it takes no
    connections), while the workers bind beside it with SO_REUSEPORT, which the server sets
    for workers > 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])


@contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port where nothing listens (connections are refused) for as long as the context
    lasts: bound by this socket, which never listens, so no other process can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])
