"""Bearer tokens against real servers on 127.0.0.1: UNAUTHENTICATED / PERMISSION_DENIED by
the method table, health and reflection open (or not, with auth_health), failures
counted in nnserve_auth_failures_total and grpc_server_handled_total, logged with the
request id, never with the token; tritonclient and the CLI with tokens; the tokens file
reloaded, and a bad one stops the server."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nnserve_client import NNServeClient, NNServeError
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from services.ops import auth
from services.rpc.endpoints import KSERVE, PREDICTOR
from services.rpc.server import build_server
from tests.support.cli import client_cli
from tests.support.inference import infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.security import (
    ADMIN_TOKEN,
    FEATURES,
    INFER_TOKEN,
    MODEL,
    SERVING,
    WRONG_TOKEN,
    bearer,
    channel,
    code_of,
    health_code,
    tritonclient,
    write_tokens,
)
from tests.support.servers import make_settings, running_server


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
        assert {KSERVE, PREDICTOR} <= services

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
