"""Security of the real entry point (`python -m services`):

- worker processes configured only by NNSERVE_* variables serve mutual TLS and check
  tokens, and SIGTERM ends them cleanly;
- plaintext on a non-loopback host refuses to start unless chosen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from nnserve_client import NNServeClient, NNServeError
from services.settings import Settings
from tests.support.paths import ROOT
from tests.support.ports import shared_port
from tests.support.security import INFER_TOKEN, MODEL, PKI, SERVING, health_code


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
