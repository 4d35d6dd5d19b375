"""What the security tests share: a throw-away PKI (tests/support/pki.py), connections that
make their own handshake, bearer tokens and a tokens file, tritonclient in a process of its
own, and the TLS / mTLS servers.

The fixtures (pki, tokens_file, tls_server, mtls_server) are registered by
tests/service/conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.ops import auth
from tests.support.models import golden_inputs
from tests.support.pki import CA, Issued, issue, make_ca, serial_of
from tests.support.servers import RunningServer, make_settings, running_server

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
