"""One Docker engine per session for the compose stack tests (make stack-test): started
(or found) by the first test that asks, see tests/support/compose_stack.py."""

from tests.support.compose_stack import docker_engine

__all__ = ["docker_engine"]
