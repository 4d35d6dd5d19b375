"""The session fixtures every level may ask for: the model repository and the running
servers (tests/support/servers.py says what each is). Nothing is built until a test asks,
so tests/unit, which asks for none, starts no server and trains no model."""

from tests.support.servers import (
    classify_server,
    frontend,
    model_repository,
    scratch_repository,
    sequence_server,
    servers,
)

__all__ = [
    "classify_server",
    "frontend",
    "model_repository",
    "scratch_repository",
    "sequence_server",
    "servers",
]
