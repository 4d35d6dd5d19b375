"""Every service test runs once per front end (native, aio): the `frontend` fixture
(tests/support/servers.py) is parametrised here and requested by every test, so the
servers a test starts, in this process or as child processes, use it. A test that is
about one front end says so with `@pytest.mark.frontends("aio")` (or "native").

Also the fixtures of the security tests (tests/support/security.py): the PKI, a tokens
file, and servers with TLS and mutual TLS."""

import pytest

from tests.support.security import mtls_server, pki, tls_server, tokens_file
from tests.support.servers import FRONTENDS

__all__ = ["mtls_server", "pki", "tls_server", "tokens_file"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "frontend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("frontends")
        names = marker.args if marker is not None else FRONTENDS
        metafunc.parametrize("frontend", names, indirect=True, scope="session")


@pytest.fixture(autouse=True)
def _each_frontend(frontend: str) -> str:
    return frontend
