"""The session fixtures, for every level: the model repository and the running servers
(tests/support/servers.py says what each is). Nothing is built until a test asks."""

from tests.support.compose_stack import docker_engine
from tests.support.servers import (
    classify_server,
    model_repository,
    scratch_repository,
    sequence_server,
    servers,
)

__all__ = [
    "classify_server",
    "docker_engine",
    "model_repository",
    "scratch_repository",
    "sequence_server",
    "servers",
]
