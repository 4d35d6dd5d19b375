"""Fixtures of the security tests (tests/support/security.py): the PKI, a tokens file,
and servers with TLS and mutual TLS."""

from tests.support.security import mtls_server, pki, tls_server, tokens_file

__all__ = ["mtls_server", "pki", "tls_server", "tokens_file"]
