"""Transport security: TLS and mutual TLS for the gRPC and REST ports, with certificate
rotation.

- TLS when NNSERVE_TLS_CERT + NNSERVE_TLS_KEY are set; with NNSERVE_TLS_CLIENT_CA the
  server also requires a client certificate signed by that CA (mutual TLS).
- Plaintext only when chosen: on a loopback host it is the default (local runs, tests);
  on any other host the settings refuse to load unless NNSERVE_PLAINTEXT=true.
- Rotation without a restart: gRPC asks `CertificateReloader.fetch` before each new
  handshake; when a file's (mtime, size, inode) changed and the new key matches the new
  certificate, new connections get the new files. Open connections keep theirs. A half
  written or mismatched pair is logged and the previous pair stays in use.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class TLSConfigError(ValueError):
    """The TLS files cannot be read or do not form a usable certificate/key pair."""


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: client certificates are required and verified

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    stamps = []
    for path in paths:
        st = os.stat(path)  # follows symlinks: Kubernetes secret volumes swap a link
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


def _read_checked(files: TLSFiles) -> tuple[bytes, bytes, bytes | None]:
    """Read the files and check that the key belongs to the certificate."""
    try:
        cert, key = files.cert.read_bytes(), files.key.read_bytes()
        ca = files.client_ca.read_bytes() if files.client_ca else None
        # ssl verifies that the key matches the certificate (and that both parse).
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
        if files.client_ca:
            ssl.create_default_context(cafile=str(files.client_ca))
    except (OSError, ssl.SSLError) as err:
        raise TLSConfigError(f"TLS files unusable: {err}") from None
    return cert, key, ca


class CertificateReloader:
    """Holds the served certificate configuration; reloads it when the files change."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = _stamp(files.paths)
        self._rejected: _Stamp | None = None  # files already found unusable: log once
        self.initial = self._configuration(*_read_checked(files))
        self.reloads = 0

    @staticmethod
    def _configuration(
        cert: bytes, key: bytes, ca: bytes | None
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each new handshake: a new configuration, or None to keep
        the current one. Never raises (an exception here would fail the handshake)."""
        stamp: _Stamp | None = None
        try:
            with self._lock:
                stamp = _stamp(self.files.paths)
                if stamp in (self._stamp, self._rejected):
                    return None
                config = self._configuration(*_read_checked(self.files))
                self._stamp = stamp
                self.reloads += 1
            log.info("TLS certificate files changed: new connections use the new files")
            return config
        except (OSError, TLSConfigError) as err:
            # Mid-rotation (certificate written, key not yet) or a bad file: keep serving.
            self._rejected = stamp
            log.warning("TLS certificate reload skipped, previous files stay in use: %s", err)
            return None


class ContextReloader:
    """An ssl.SSLContext for the REST port that follows the files as CertificateReloader
    does for gRPC: each new handshake compares the files' stamps, and when they changed
    and the new pair is usable, that connection and later ones get a context built from
    the new files (the swap happens in the ClientHello callback, before any certificate
    is sent). Open connections keep theirs; a bad or half-written pair is logged once and
    the previous context stays."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        try:
            self._stamp = _stamp(files.paths)
            _read_checked(files)
            self.context = self._build()
        except (OSError, ssl.SSLError) as err:
            raise TLSConfigError(f"TLS files unusable: {err}") from None
        self._rejected: _Stamp | None = None
        self.reloads = 0

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.files.cert, self.files.key)
        if self.files.client_ca:
            context.load_verify_locations(cafile=str(self.files.client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        context.sni_callback = self._hello  # called for every ClientHello, SNI or not
        return context

    def _hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, old: ssl.SSLContext
    ) -> None:
        current = self.current()
        if current is not old:
            connection.context = current

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, rebuilt when the files changed. Never raises
        (an exception here would fail the handshake)."""
        stamp: _Stamp | None = None
        try:
            with self._lock:
                stamp = _stamp(self.files.paths)
                if stamp in (self._stamp, self._rejected):
                    return self.context
                _read_checked(self.files)
                self.context = self._build()
                self._stamp = stamp
                self.reloads += 1
            log.info("TLS certificate files changed: new REST connections use the new files")
        except (OSError, ssl.SSLError, TLSConfigError) as err:
            self._rejected = stamp
            log.warning("REST TLS reload skipped, previous files stay in use: %s", err)
        return self.context


def server_credentials(files: TLSFiles) -> tuple[grpc.ServerCredentials, CertificateReloader]:
    """Server credentials that re-read the files on change; raises TLSConfigError when
    the files are unusable at start."""
    try:
        reloader = CertificateReloader(files)
    except OSError as err:
        raise TLSConfigError(f"TLS files unusable: {err}") from None
    credentials = grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader.fetch,
        require_client_authentication=files.client_ca is not None,
    )
    return credentials, reloader
