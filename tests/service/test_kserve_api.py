"""Every KServe v2 RPC against real servers, for all five models; outputs must equal
in-process ONNX Runtime on the same inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from tests.support.inference import decode_outputs, infer_request
from tests.support.models import ALL_MODELS, golden_inputs, model_json, reference_outputs
from tests.support.servers import RunningServer, make_settings, running_server


def stub_for(server: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(server.channel())


def test_server_live_ready_metadata(classify_server: RunningServer) -> None:
    stub = stub_for(classify_server)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "nnserve"
    assert "model_repository" in meta.extensions


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_model_infer_matches_in_process_ort(
    name: str, raw: bool, servers: dict[str, RunningServer], model_repository: Path
) -> None:
    stub = stub_for(servers[name])
    inputs = golden_inputs(model_repository, name)
    response = stub.ModelInfer(infer_request(name, inputs, raw=raw))
    assert response.model_name == name
    assert response.model_version == "1"
    assert response.id == f"req-{name}"
    got = decode_outputs(response)
    expected = reference_outputs(model_repository, name, inputs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_ready_metadata_and_config(
    name: str, servers: dict[str, RunningServer], model_repository: Path
) -> None:
    stub = stub_for(servers[name])
    doc = model_json(model_repository, name)
    assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=name, version="1")).ready

    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
    assert meta.name == name and list(meta.versions) == ["1"]
    # Triton shows a batch-only input ([B], e.g. lengths) as [-1, 1] and accepts [B, 1].
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (t["name"], t["dtype"], t["shape"] if len(t["shape"]) > 1 else [-1, 1])
        for t in doc["inputs"]
    ]
    assert [t.name for t in meta.outputs] == [t["name"] for t in doc["outputs"]]

    config = stub.ModelConfig(pb.ModelConfigRequest(name=name)).config
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == doc["serving"]["max_batch_size"]
    # Triton convention: dims exclude the batch axis when max_batch_size > 0; a batch-only
    # input is dims [1] reshaped to [].
    assert [list(i.dims) for i in config.input] == [t["shape"][1:] or [1] for t in doc["inputs"]]
    for item, t in zip(config.input, doc["inputs"], strict=True):
        assert item.HasField("reshape") == (len(t["shape"]) == 1)
    assert config.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_requested_output_subset(servers: dict[str, RunningServer], model_repository: Path) -> None:
    inputs = golden_inputs(model_repository, "lstm")
    request = infer_request("lstm", inputs)
    request.outputs.add(name="sequence_probabilities")
    response = stub_for(servers["lstm"]).ModelInfer(request)
    assert [o.name for o in response.outputs] == ["sequence_probabilities"]


def test_batch_only_input_accepts_triton_shape(
    servers: dict[str, RunningServer], model_repository: Path
) -> None:
    """lengths declared [B] may come as [B, 1] (how Triton's clients send dims [1])."""
    inputs = golden_inputs(model_repository, "lstm")
    flat = stub_for(servers["lstm"]).ModelInfer(infer_request("lstm", inputs))
    column = dict(inputs, lengths=inputs["lengths"].reshape(-1, 1))
    shaped = stub_for(servers["lstm"]).ModelInfer(infer_request("lstm", column))
    for key, value in decode_outputs(flat).items():
        np.testing.assert_array_equal(decode_outputs(shaped)[key], value)


def test_stream_infer_answers_every_request_with_its_id(
    servers: dict[str, RunningServer], model_repository: Path
) -> None:
    inputs = golden_inputs(model_repository, "mlp")
    expected = reference_outputs(model_repository, "mlp", inputs)
    requests = [infer_request("mlp", inputs) for _ in range(20)]
    for i, r in enumerate(requests):
        r.id = f"s{i}"
    bad = pb.ModelInferRequest(model_name="mlp", id="bad")
    bad.inputs.add(name="features", datatype="FP64", shape=[1, 1])
    bad.raw_input_contents.append(b"\0" * 8)
    stream = stub_for(servers["mlp"]).ModelStreamInfer(iter([*requests, bad]))
    answers = {r.infer_response.id: r for r in stream}
    assert set(answers) == {f"s{i}" for i in range(20)} | {"bad"}
    assert answers["bad"].error_message.startswith("INVALID_ARGUMENT")
    for i in range(20):
        assert answers[f"s{i}"].error_message == ""
        got = decode_outputs(answers[f"s{i}"].infer_response)
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-5)


def test_statistics_count_successes_and_failures(
    classify_server: RunningServer, model_repository: Path
) -> None:
    stub = stub_for(classify_server)

    def stats() -> pb.ModelStatistics:
        response = stub.ModelStatistics(pb.ModelStatisticsRequest(name="perceptron"))
        assert len(response.model_stats) == 1
        return response.model_stats[0]

    before = stats()
    inputs = golden_inputs(model_repository, "perceptron")
    stub.ModelInfer(infer_request("perceptron", inputs))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="perceptron"))
    after = stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.inference_count == before.inference_count + len(next(iter(inputs.values())))
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    # Batcher-side numbers perf_analyzer reads: queue and compute per request/batch.
    assert after.inference_stats.queue.count == before.inference_stats.queue.count + 1
    assert (
        after.inference_stats.compute_infer.count == before.inference_stats.compute_infer.count + 1
    )
    assert after.execution_count == before.execution_count + 1

    def batches_of(stats: pb.ModelStatistics, size: int) -> int:
        return next((b.compute_infer.count for b in stats.batch_stats if b.batch_size == size), 0)

    rows = len(next(iter(inputs.values())))
    assert batches_of(after, rows) == batches_of(before, rows) + 1
    assert all(b.compute_infer.ns > 0 for b in after.batch_stats)


def test_bytes_and_bf16_are_refused(classify_server: RunningServer, model_repository: Path) -> None:
    """Not in the datatype table: a request naming them is INVALID_ARGUMENT, not INTERNAL."""
    stub = stub_for(classify_server)
    width = len(model_json(model_repository, "mlp")["classify"]["features"])
    for datatype, raw in (("BYTES", b"\x01\x00\x00\x00a" * width), ("BF16", b"\0\0" * width)):
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="features", datatype=datatype, shape=[1, width])
        request.raw_input_contents.append(raw)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, datatype
        assert "model expects FP32" in (err.value.details() or "")


def test_repository_index_unload_and_load(scratch_repository: Path) -> None:
    settings = make_settings(scratch_repository, service="classify", model_control="explicit")
    with running_server(settings) as server:
        stub = stub_for(server)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        assert {(m.name, m.version, m.state) for m in index.models} == {
            (name, "1", "READY") for name in ("perceptron", "mlp", "cnn")
        }
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="cnn"))
        names = {m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert "cnn" not in names
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelReady(pb.ModelReadyRequest(name="cnn"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn"))
        assert stub.ModelReady(pb.ModelReadyRequest(name="cnn")).ready
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="no_such_model"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_new_version_serves_by_default_and_old_stays_addressable(scratch_repository: Path) -> None:
    v1 = scratch_repository / "mlp" / "1"
    v2 = scratch_repository / "mlp" / "2"
    shutil.copytree(v1, v2)
    doc = json.loads((v2 / "model.json").read_text())
    doc["version"] = 2
    (v2 / "model.json").write_text(json.dumps(doc))
    settings = make_settings(scratch_repository, service="classify", models=["mlp"])
    with running_server(settings) as server:
        stub = stub_for(server)
        inputs = golden_inputs(scratch_repository, "mlp")
        assert stub.ModelInfer(infer_request("mlp", inputs)).model_version == "2"
        request = infer_request("mlp", inputs)
        request.model_version = "1"
        assert stub.ModelInfer(request).model_version == "1"
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"))
        assert list(meta.versions) == ["1", "2"]
        # ModelConfig says what is served: every version (version_policy all).
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
        assert config.version_policy.WhichOneof("policy_choice") == "all"
