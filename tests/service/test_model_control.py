"""Model control (none / explicit / poll), version policy, the repository scan and the
repository containment rule, against real in-process servers (tests/support/servers.py).

Faults against real server processes (corrupt repository at start, reload under load)
are in test_model_control_process.py; the name and version rules and the settings model
control refuses, on their own, in tests/unit/test_model_names.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract.model import scan
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.inference import index_of, infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.repository import break_goldens, remove_version, stage_version
from tests.support.servers import RunningServer, make_settings, running_server

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------- helpers


def stub_of(server: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(server.channel())


def code_of(call: Callable[..., object], *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with (OK when it returns) and its details."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def load_failures(server: RunningServer, model: str) -> float:
    return read_metrics(server).total("nnserve_model_load_failures_total", model=model)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---------------------------------------------------------------------- scan


def odd_repository(model_repository: Path, tmp_path: Path) -> Path:
    """mlp and perceptron plus every kind of folder the scan must skip without failing."""
    repository = tmp_path / "repository"
    for name in ("mlp", "perceptron"):
        shutil.copytree(model_repository / name, repository / name)
    for odd in ("²", "①", "9" * 200, "07", "0", "v2"):  # empty version folders, odd names
        (repository / "mlp" / odd).mkdir()
    shutil.copytree(model_repository / "mlp" / "1", repository / "mlp" / "08")  # has model.json
    (repository / "mlp" / ".staging-3").mkdir()  # staging copies are ignored silently
    shutil.copytree(model_repository / "cnn", repository / "bad name")
    # Symlinks out of the repository: a model folder and a version folder.
    outside = tmp_path / "outside"
    shutil.copytree(model_repository / "cnn", outside / "cnn")
    shutil.copytree(model_repository / "mlp" / "1", outside / "mlp-5")
    (repository / "escaped").symlink_to(outside / "cnn")
    (repository / "mlp" / "5").symlink_to(outside / "mlp-5")
    # A symlink inside the repository is fine.
    (repository / "perceptron" / "2").symlink_to(repository / "perceptron" / "1")
    return repository


def test_scan_skips_odd_folders_and_symlinks_out(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = odd_repository(model_repository, tmp_path)
    with caplog.at_level(logging.WARNING, logger="contract.model"):
        assert scan(repository) == {"mlp": [1], "perceptron": [1, 2]}
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for odd in ("²", "①", "9" * 100, "/07'", "/0'", "/v2'", "/08'", "bad name", "escaped",
                "mlp/5'"):  # fmt: skip
        assert odd in warned, odd
    assert ".staging" not in warned


def test_odd_folders_and_odd_versions_never_stop_serving(
    model_repository: Path, tmp_path: Path
) -> None:
    """Found when tried: an empty version folder named '²' kept the whole server from
    serving, and a request for version '²' or thousands of digits answered INTERNAL."""
    repository = odd_repository(model_repository, tmp_path)
    settings = make_settings(repository, models=["*"])
    with running_server(settings) as server:
        stub = stub_of(server)
        health = health_pb2_grpc.HealthStub(server.channel())
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        assert set(index_of(stub)) == {("mlp", "1"), ("perceptron", "1"), ("perceptron", "2")}
        request = infer_request("mlp", golden_inputs(repository, "mlp"))
        assert stub.ModelInfer(request).model_version == "1"
        for version in ("²", "①", "٣", "9" * 5000, "07", "0", "-1", " 1"):
            request.model_version = version
            code, details = code_of(stub.ModelInfer, request)
            assert code == Code.INVALID_ARGUMENT, (version, code)
            assert "invalid model version" in details and len(details) < 400
            code, _ = code_of(stub.ModelReady, pb.ModelReadyRequest(name="mlp", version=version))
            assert code == Code.INVALID_ARGUMENT
        request.model_version = "9" * 18  # well formed, absent
        assert code_of(stub.ModelInfer, request)[0] == Code.NOT_FOUND
        for name in ("../mlp", "/mlp", "mlp/1", "x" * 5000, "bad name"):
            request = infer_request(name, golden_inputs(repository, "mlp"))
            code, details = code_of(stub.ModelInfer, request)
            assert code == Code.INVALID_ARGUMENT, (name, code)
            assert "invalid model name" in details and len(details) < 400


# ---------------------------------------------------------------------- mode none


def test_mode_none_refuses_load_and_unload(classify_server: RunningServer) -> None:
    stub = stub_of(classify_server)
    for call, request in (
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="mlp")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="mlp")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="../x")),
    ):
        code, details = code_of(call, request)
        assert code == Code.FAILED_PRECONDITION
        assert "NNSERVE_MODEL_CONTROL=explicit" in details and "mode is none" in details
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
    config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
    assert config.version_policy.WhichOneof("policy_choice") == "all"


# ---------------------------------------------------------------------- mode explicit


def test_explicit_load_validates_names_and_never_leaves_the_repository(
    scratch_repository: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(scratch_repository / "perceptron", outside / "perceptron")
    (scratch_repository / "evil").symlink_to(outside / "perceptron")
    shutil.copytree(scratch_repository / "mlp" / "1", outside / "mlp-2")
    (scratch_repository / "mlp" / "2").symlink_to(outside / "mlp-2")
    # model.json naming an ONNX file outside the repository.
    shutil.copytree(scratch_repository / "cnn", scratch_repository / "sneaky")
    onnx = scratch_repository / "sneaky" / "1" / "model.onnx"
    shutil.move(onnx, outside / "sneaky.onnx")
    path = scratch_repository / "sneaky" / "1" / "model.json"
    doc = json.loads(path.read_text())
    doc["name"] = "sneaky"
    doc["onnx"]["file"] = "../../../outside/sneaky.onnx"
    path.write_text(json.dumps(doc))

    settings = make_settings(scratch_repository, models=["mlp"], model_control="explicit")
    with running_server(settings) as server:
        stub = stub_of(server)
        load, unload = stub.RepositoryModelLoad, stub.RepositoryModelUnload
        for name in ("../outside/perceptron", "/etc", str(outside / "perceptron"), "a/b", "..",
                     ".", "", "x" * 300, "mlp/../cnn"):  # fmt: skip
            for call, request in (
                (load, pb.RepositoryModelLoadRequest(model_name=name)),
                (unload, pb.RepositoryModelUnloadRequest(model_name=name)),
            ):
                code, details = code_of(call, request)
                assert code == Code.INVALID_ARGUMENT, (name, code, details)
                assert len(details) < 400
        assert code_of(load, pb.RepositoryModelLoadRequest(model_name="evil"))[0] == (
            Code.NOT_FOUND
        )
        code, details = code_of(load, pb.RepositoryModelLoadRequest(model_name="sneaky"))
        assert code == Code.UNAVAILABLE and "outside the model repository" in details
        with_parameters = pb.RepositoryModelLoadRequest(model_name="mlp")
        with_parameters.parameters["file:1/model.onnx"].bytes_param = b"\0" * 16
        code, details = code_of(load, with_parameters)
        assert code == Code.INVALID_ARGUMENT and "parameters" in details
        load(pb.RepositoryModelLoadRequest(model_name="mlp"))  # version 2 links out: skipped
        assert set(index_of(stub)) == {("mlp", "1"), ("sneaky", "1")}
        assert index_of(stub)[("sneaky", "1")].state == "UNAVAILABLE"


def test_explicit_load_fails_loudly_even_while_an_older_version_serves(
    scratch_repository: Path,
) -> None:
    """Found when tried: RepositoryModelLoad answered OK when the load failed."""
    settings = make_settings(scratch_repository, models=["mlp"], model_control="explicit")
    with running_server(settings) as server:
        stub = stub_of(server)
        request = infer_request("mlp", golden_inputs(scratch_repository, "mlp"))
        assert load_failures(server, "mlp") == 0

        stage_version(scratch_repository, "mlp", 2, break_goldens)
        code, details = code_of(
            lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
        )
        assert code == Code.UNAVAILABLE
        assert "version 2" in details and "golden" in details and "versions serving: 1" in details
        assert stub.ModelInfer(request).model_version == "1"  # the good one still serves
        assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="2")).ready
        assert index_of(stub)[("mlp", "2")].state == "UNAVAILABLE"
        assert load_failures(server, "mlp") == 1

        # A model with no good version: the error says nothing serves.
        onnx = scratch_repository / "cnn" / "1" / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:100])
        code, details = code_of(
            lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn"))
        )
        assert code == Code.UNAVAILABLE
        assert "sha256" in details and "no version serving" in details

        # Fixed version 2: Load succeeds and it serves by default (policy all: 1 stays).
        remove_version(scratch_repository, "mlp", 2)
        stage_version(scratch_repository, "mlp", 2)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
        request.model_version = ""
        assert stub.ModelInfer(request).model_version == "2"
        assert {v for n, v in index_of(stub) if n == "mlp"} == {"1", "2"}
        assert load_failures(server, "mlp") == 1


def test_explicit_load_finishes_when_its_caller_gives_up(scratch_repository: Path) -> None:
    """A Load whose RPC is cancelled mid-way (client deadline) still completes: the
    version must not stay LOADING for ever. Driven on the server loop, where the cancel
    can be timed exactly: after the load began, before it ended."""
    settings = make_settings(scratch_repository, models=["mlp"], model_control="explicit")
    with running_server(settings) as server:
        registry = server.server.registry

        async def cancel_midway() -> str:
            load = asyncio.create_task(server.server.control.load("cnn", {}))
            while "cnn" not in registry.names():
                await asyncio.sleep(0)
            assert registry.record("cnn").state.value == "LOADING"
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            for _ in range(2000):
                if registry.record("cnn").state.value != "LOADING":
                    break
                await asyncio.sleep(0.005)
            return registry.record("cnn").state.value

        assert server.call(cancel_midway()) == "READY"
        assert stub_of(server).ModelReady(pb.ModelReadyRequest(name="cnn")).ready


def test_unload_then_load_leaves_no_gap(scratch_repository: Path) -> None:
    """Found when tried: "unload followed by load leaves about a second of NOT_FOUND".

    In this code base every request that starts after RepositoryModelLoad returns is
    served (tried with traffic running: the only NOT_FOUND/UNAVAILABLE answers fall
    between the Unload and the end of the Load). What could still lag behind the answer
    is per-model health, set by tasks on the server loop: Load and Unload now wait for
    those updates before answering. Traffic to another model never fails.
    """
    settings = make_settings(scratch_repository, model_control="explicit")
    with running_server(settings) as server:
        stub = stub_of(server)
        health = health_pb2_grpc.HealthStub(server.channel())
        cnn = infer_request("cnn", golden_inputs(scratch_repository, "cnn"))
        mlp = infer_request("mlp", golden_inputs(scratch_repository, "mlp"))
        log: list[tuple[str, float, grpc.StatusCode]] = []
        stop = threading.Event()

        def traffic(model: str, request: pb.ModelInferRequest) -> None:
            own = pb_grpc.GRPCInferenceServiceStub(server.channel())
            while not stop.is_set():
                started = time.monotonic()
                log.append((model, started, code_of(own.ModelInfer, request, timeout=10)[0]))

        senders = [("cnn", cnn)] * 3 + [("mlp", mlp)]
        threads = [threading.Thread(target=traffic, args=a) for a in senders]
        for t in threads:
            t.start()
        for _ in range(3):
            time.sleep(0.2)
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="cnn"))
            assert code_of(stub.ModelReady, pb.ModelReadyRequest(name="cnn"))[0] == (Code.NOT_FOUND)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn"))
            loaded = time.monotonic()
            # No sleep: everything answers as loaded the moment Load returns.
            assert stub.ModelReady(pb.ModelReadyRequest(name="cnn")).ready
            assert health.Check(health_pb2.HealthCheckRequest(service="cnn")).status == SERVING
            assert stub.ModelInfer(cnn).model_name == "cnn"
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        after = [code for model, started, code in log if model == "cnn" and started >= loaded]
        assert after and set(after) == {Code.OK}
        assert {code for model, _, code in log if model == "cnn"} <= {
            Code.OK, Code.NOT_FOUND, Code.UNAVAILABLE,
        }  # fmt: skip
        assert {code for model, _, code in log if model == "mlp"} == {Code.OK}


# ---------------------------------------------------------------------- mode poll


def test_poll_rolls_out_keeps_good_version_over_broken_one_and_rolls_back(
    scratch_repository: Path,
) -> None:
    settings = make_settings(
        scratch_repository, models=["mlp"], model_control="poll", poll_seconds=0.1
    )
    with running_server(settings) as server:
        stub = stub_of(server)
        request = infer_request("mlp", golden_inputs(scratch_repository, "mlp"))
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
        assert config.version_policy.latest.num_versions == 1
        code, details = code_of(
            lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
        )
        assert code == Code.FAILED_PRECONDITION and "mode is poll" in details

        # A broken new version: reported, never serves, the good one goes on.
        stage_version(scratch_repository, "mlp", 2, break_goldens)
        wait_until(lambda: ("mlp", "2") in index_of(stub))
        wait_until(lambda: index_of(stub)[("mlp", "2")].state == "UNAVAILABLE")
        assert "golden" in index_of(stub)[("mlp", "2")].reason
        assert index_of(stub)[("mlp", "1")].state == "READY"
        assert stub.ModelInfer(request).model_version == "1"
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="2")).ready
        health = health_pb2_grpc.HealthStub(server.channel())
        assert health.Check(health_pb2.HealthCheckRequest(service="mlp")).status == SERVING
        assert read_metrics(server).total("nnserve_model_ready", model="mlp", version="2") == 0
        time.sleep(0.5)  # several polls: an unchanged broken version is not retried
        assert load_failures(server, "mlp") == 1

        # The fixed version 2 replaces it: serves, and version 1 is retired.
        remove_version(scratch_repository, "mlp", 2)
        stage_version(scratch_repository, "mlp", 2)
        wait_until(lambda: stub.ModelInfer(request).model_version == "2")
        wait_until(lambda: set(index_of(stub)) == {("mlp", "2")})
        request.model_version = "1"
        assert code_of(stub.ModelInfer, request)[0] == Code.NOT_FOUND

        # Roll back by removing version 2: version 1 loads again.
        remove_version(scratch_repository, "mlp", 2)
        request.model_version = ""
        wait_until(lambda: code_of(stub.ModelInfer, request)[0] == Code.OK
                   and stub.ModelInfer(request).model_version == "1")  # fmt: skip
        wait_until(lambda: set(index_of(stub)) == {("mlp", "1")})
        assert load_failures(server, "mlp") == 1

        # The whole folder of a configured model removed: reported not found; back: ready.
        os.rename(scratch_repository / "mlp", scratch_repository / ".mlp")
        wait_until(lambda: index_of(stub)[("mlp", "1")].state == "UNAVAILABLE")
        assert "not found" in index_of(stub)[("mlp", "1")].reason
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
        os.rename(scratch_repository / ".mlp", scratch_repository / "mlp")
        wait_until(lambda: stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready)


def test_poll_with_all_models_picks_up_and_drops_model_folders(
    model_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / "mlp", repository / "mlp")
    settings = make_settings(repository, models=["*"], model_control="poll", poll_seconds=0.1)
    with running_server(settings) as server:
        stub = stub_of(server)
        shutil.copytree(model_repository / "perceptron", repository / ".perceptron")
        os.rename(repository / ".perceptron", repository / "perceptron")
        wait_until(lambda: ("perceptron", "1") in index_of(stub))
        wait_until(lambda: stub.ModelReady(pb.ModelReadyRequest(name="perceptron")).ready)
        request = infer_request("perceptron", golden_inputs(model_repository, "perceptron"))
        assert stub.ModelInfer(request).model_version == "1"
        os.rename(repository / "perceptron", repository / ".perceptron")
        wait_until(lambda: set(index_of(stub)) == {("mlp", "1")})
        code, _ = code_of(stub.ModelReady, pb.ModelReadyRequest(name="perceptron"))
        assert code == Code.NOT_FOUND
        assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready

        # The repository root gone (an unmounted volume): polls are skipped, nothing unloads.
        os.rename(repository, tmp_path / "unmounted")
        time.sleep(0.5)
        assert set(index_of(stub)) == {("mlp", "1")}
        assert stub.ModelReady(pb.ModelReadyRequest(name="mlp")).ready
        os.rename(tmp_path / "unmounted", repository)
