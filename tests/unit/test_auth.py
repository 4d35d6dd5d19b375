"""The token table and the token helper on their own: every served method has a role, and
`python -m services.ops.auth` hashes and makes tokens that the server's loader reads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from grpc_reflection.v1alpha import reflection_pb2

from protos import nnserve_pb2
from services.ops import auth
from tests.support.paths import ROOT


def test_every_served_method_has_a_role() -> None:
    """The method table covers every RPC the server registers, so none falls to the
    admin default by accident; unknown methods need admin (fail closed)."""
    from grpc_health.v1 import health_pb2 as h

    from protos import grpc_service_pb2

    services = [
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        nnserve_pb2.DESCRIPTOR.services_by_name["Predictor"],
        nnserve_pb2.DESCRIPTOR.services_by_name["Routing"],
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
