"""TLS, mutual TLS and certificate rotation against real servers on 127.0.0.1, with
certificates made at test time (tests/support/pki.py, tests/support/security.py).

- TLS: the client library (blocking and asyncio), the CLI and tritonclient (ssl=True)
  connect; a plaintext client or one that trusts another CA does not.
- mTLS: no client certificate, an expired one, or one from a foreign CA is refused at
  the handshake; a good one works.
- Rotation: replacing the files changes the certificate new connections see, while the
  server keeps running; a half-written pair is ignored until it matches.
- Unusable TLS files stop the server.

Tokens: tests/service/test_tokens.py; the entry point's policy and worker processes:
tests/service/test_security_processes.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nnserve_client import NNServeClient, NNServeError, ServingStatus
from nnserve_client.aio import AsyncNNServeClient
from services.rpc.server import build_server
from tests.support.cli import client_cli
from tests.support.pki import serial_of
from tests.support.security import (
    FEATURES,
    INFER_TOKEN,
    MODEL,
    PKI,
    SERVING,
    channel,
    health_code,
    replace_file,
    served_serial,
    tritonclient,
)
from tests.support.servers import RunningServer, make_settings, running_server

# ---------------------------------------------------------------- TLS


def test_tls_serves_the_client_library_and_refuses_plaintext(
    tls_server: RunningServer, pki: PKI
) -> None:
    address = tls_server.address
    with NNServeClient(address, ca=pki.ca.cert) as client:
        assert client.health() is ServingStatus.SERVING
        result = client.classify_tabular(MODEL, [FEATURES])
        assert result.model == MODEL and len(result.results) == 1
    # A plaintext client cannot talk to a TLS port ...
    with NNServeClient(address, timeout=3) as plain, pytest.raises(NNServeError) as err:
        plain.health()
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    # ... nor a TLS client that trusts another CA.
    assert health_code(address, ca=pki.other_ca.cert) is grpc.StatusCode.UNAVAILABLE
    assert serial_of(pki.server.cert.read_bytes()) == served_serial(tls_server.server.grpc_port)


def test_tls_with_tritonclient(
    tls_server: RunningServer, pki: PKI, model_repository: Path, tmp_path: Path
) -> None:
    report = tritonclient(
        tls_server.address,
        model_repository,
        tmp_path,
        tls={"ssl": True, "root_certificates": str(pki.ca.cert)},
    )
    assert report == {"ready": True, "outputs": 2}
    plain = tritonclient(tls_server.address, model_repository, tmp_path)
    assert plain == {"error": "StatusCode.UNAVAILABLE"}


def test_tls_with_the_cli(tls_server: RunningServer, pki: PKI) -> None:
    ok = client_cli("--address", tls_server.address, "--ca", str(pki.ca.cert), "health")
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
    plain = client_cli("--address", tls_server.address, "--timeout", "3", "health")
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    missing = client_cli("--address", tls_server.address, "--ca", "no-such-ca.pem", "health")
    assert missing.returncode == 2 and "no-such-ca.pem" in missing.stderr
    # --server-name: the name checked in the certificate when the address differs.
    base = ("--address", tls_server.address, "--ca", str(pki.ca.cert), "--timeout", "3")
    named = client_cli(*base, "--server-name", "localhost", "health")
    assert named.returncode == 0, named.stderr
    wrong = client_cli(*base, "--server-name", "other.example", "health")
    assert wrong.returncode == 1 and "UNAVAILABLE" in wrong.stderr


# ---------------------------------------------------------------- mutual TLS


def test_mtls_refuses_missing_expired_and_foreign_client_certificates(
    mtls_server: RunningServer, pki: PKI
) -> None:
    address, ca = mtls_server.address, pki.ca.cert
    assert health_code(address, ca, pki.client) == SERVING
    assert health_code(address, ca) is grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert health_code(address, ca, pki.expired_client) is grpc.StatusCode.UNAVAILABLE
    assert health_code(address, ca, pki.foreign_client) is grpc.StatusCode.UNAVAILABLE
    assert health_code(address) is grpc.StatusCode.UNAVAILABLE  # plaintext
    with NNServeClient(address, ca=ca, cert=pki.client.cert, key=pki.client.key) as client:
        assert client.classify_tabular(MODEL, [FEATURES]).model == MODEL


def test_mtls_with_tritonclient_and_the_cli(
    mtls_server: RunningServer, pki: PKI, model_repository: Path, tmp_path: Path
) -> None:
    tls = {"ssl": True, "root_certificates": str(pki.ca.cert)}
    with_cert = {
        **tls,
        "private_key": str(pki.client.key),
        "certificate_chain": str(pki.client.cert),
    }
    report = tritonclient(mtls_server.address, model_repository, tmp_path, tls=with_cert)
    assert report == {"ready": True, "outputs": 2}
    refused = tritonclient(mtls_server.address, model_repository, tmp_path, tls=tls)
    assert refused == {"error": "StatusCode.UNAVAILABLE"}

    base = ("--address", mtls_server.address, "--ca", str(pki.ca.cert))
    good = client_cli(*base, "--cert", str(pki.client.cert), "--key", str(pki.client.key), "health")
    assert good.returncode == 0 and good.stdout.strip() == "SERVING", good.stderr
    no_cert = client_cli(*base, "--timeout", "3", "health")
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr


# ---------------------------------------------------------------- rotation


def test_certificate_rotation_reaches_new_connections_without_a_restart(
    model_repository: Path, pki: PKI, tmp_path: Path
) -> None:
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(pki.server.cert, live_cert)
    shutil.copyfile(pki.server.key, live_key)
    settings = make_settings(model_repository, models=[MODEL], tls_cert=live_cert, tls_key=live_key)
    with running_server(settings) as running:
        address, port = running.address, running.server.grpc_port
        assert served_serial(port) == pki.server.serial
        old = channel(address, pki.ca.cert)  # a connection made before the rotation
        old_health = health_pb2_grpc.HealthStub(old)
        assert old_health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING

        # Half way (new certificate, old key): the pair does not match, the old one stays.
        replace_file(pki.rotated.cert, live_cert)
        assert served_serial(port) == pki.server.serial
        assert health_code(address, pki.ca.cert) == SERVING

        replace_file(pki.rotated.key, live_key)
        assert served_serial(port) == pki.rotated.serial
        assert health_code(address, pki.other_ca.cert) == SERVING  # trusts only the new CA
        assert health_code(address, pki.ca.cert) is grpc.StatusCode.UNAVAILABLE
        # The connection opened before the rotation keeps working, on the same server.
        assert old_health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        old.close()
        assert running.server.certificates is not None
        assert running.server.certificates.reloads == 1


def test_client_ca_bundle_reload_admits_a_new_ca(
    model_repository: Path, pki: PKI, tmp_path: Path
) -> None:
    bundle = tmp_path / "client-ca.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes())
    settings = make_settings(
        model_repository,
        models=[MODEL],
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=bundle,
    )
    with running_server(settings) as running:
        address, ca = running.address, pki.ca.cert
        assert health_code(address, ca, pki.foreign_client) is grpc.StatusCode.UNAVAILABLE
        both = tmp_path / "both.pem"
        both.write_bytes(pki.ca.cert.read_bytes() + pki.other_ca.cert.read_bytes())
        replace_file(both, bundle)
        assert health_code(address, ca, pki.foreign_client) == SERVING
        assert health_code(address, ca, pki.client) == SERVING
        assert health_code(address, ca) is grpc.StatusCode.UNAVAILABLE  # still mutual TLS


# ---------------------------------------------------------------- asyncio client


async def test_asyncio_client_tls_mtls_and_tokens(
    tls_server: RunningServer,
    mtls_server: RunningServer,
    model_repository: Path,
    tokens_file: Path,
    pki: PKI,
) -> None:
    """AsyncNNServeClient takes the blocking client's TLS, mTLS and token options."""
    async with AsyncNNServeClient(tls_server.address, ca=pki.ca.cert) as client:
        assert await client.health() is ServingStatus.SERVING
        assert (await client.classify_tabular(MODEL, [FEATURES])).model == MODEL
    async with AsyncNNServeClient(tls_server.address, timeout=3) as plain:
        with pytest.raises(NNServeError) as err:
            await plain.health()
    assert err.value.code is grpc.StatusCode.UNAVAILABLE

    ca, client_pair = pki.ca.cert, {"cert": pki.client.cert, "key": pki.client.key}
    async with AsyncNNServeClient(mtls_server.address, ca=ca, **client_pair) as client:
        assert (await client.classify_tabular(MODEL, [FEATURES])).model == MODEL
    async with AsyncNNServeClient(mtls_server.address, ca=ca, timeout=3) as no_certificate:
        with pytest.raises(NNServeError) as err:
            await no_certificate.health()
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="both cert and key"):
        AsyncNNServeClient(mtls_server.address, ca=ca, cert=pki.client.cert)

    settings = make_settings(model_repository, models=[MODEL], tokens_file=tokens_file)
    with running_server(settings) as server:
        async with AsyncNNServeClient(server.address) as anonymous:
            with pytest.raises(NNServeError) as err:
                await anonymous.classify_tabular(MODEL, [FEATURES])
            assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
        async with AsyncNNServeClient(server.address, token=INFER_TOKEN) as client:
            assert (await client.classify_tabular(MODEL, [FEATURES])).model == MODEL


# ---------------------------------------------------------------- unusable files


def test_unusable_tls_files_stop_the_server(
    model_repository: Path, pki: PKI, tmp_path: Path
) -> None:
    from services.ops.tls import TLSConfigError

    mismatched = make_settings(
        model_repository, models=[MODEL], tls_cert=pki.server.cert, tls_key=pki.client.key
    )
    with pytest.raises(TLSConfigError, match="MISMATCH"):
        build_server(mismatched)
    missing = make_settings(
        model_repository, models=[MODEL], tls_cert=tmp_path / "none.pem", tls_key=pki.server.key
    )
    with pytest.raises(TLSConfigError, match=r"none\.pem"):
        build_server(missing)
