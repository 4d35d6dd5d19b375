"""The peers benchmark's pieces, without installing any peer: the generated Triton and
MLServer configurations, the table with a peer missing, medians of rounds, and the
no-op grpc.aio floor served for real and measured by the load generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from bench.nullserver import noop_response, request_id
from bench.peers import configs, envs, report
from bench.peers.run import PeerOptions, loadgen_point, median_of
from bench.workload import ModelInfo, build_workload, from_repository, sample_rows
from contract.model import TensorSpec
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

SERVING = {"max_batch_size": 48, "max_queue_delay_ms": 1.5}
MODEL_JSON: dict[str, Any] = {
    "name": "mlp",
    "version": 1,
    "task": "classify",
    "labels": ["no", "yes"],
    "classify": {"input": "features", "scores_output": "probabilities", "kind": "tabular"},
    "onnx": {"file": "model.onnx", "sha256": "0" * 64},
    "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "probabilities", "dtype": "FP32", "shape": [-1, 2]},
        {"name": "logits", "dtype": "FP32", "shape": [-1, 2]},
    ],
    "serving": SERVING,
}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository with model.json and a stand-in model.onnx (the configs only copy it)."""
    version = tmp_path / "repo" / "mlp" / "1"
    version.mkdir(parents=True)
    (version / "model.json").write_text(json.dumps(MODEL_JSON))
    (version / "model.onnx").write_bytes(b"not parsed here")
    return tmp_path / "repo"


def test_triton_config_parses_as_model_config(repository: Path, tmp_path: Path) -> None:
    info = from_repository(repository, "mlp")
    root = configs.write_triton_repository(tmp_path / "triton", info, configs.Batching.of(info))
    config = text_format.Parse((root / "mlp" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("mlp", "python", 48)
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
        ("features", [4], mc.TYPE_FP32)
    ]
    assert [o.name for o in config.output] == ["probabilities", "logits"]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1500
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    model_py = (root / "mlp" / "1" / "model.py").read_text()
    compile(model_py, "model.py", "exec")  # valid Python, imports resolved only by Triton
    assert "class TritonPythonModel" in model_py
    assert (root / "mlp" / "1" / "model.onnx").read_bytes() == b"not parsed here"


def test_triton_config_batch_only_input_uses_reshape() -> None:
    info = ModelInfo(
        "lstm", "sequence",
        (TensorSpec("tokens", "INT64", (-1, -1)), TensorSpec("lengths", "INT64", (-1,))),
        (TensorSpec("logits", "FP32", (-1, 3)),),
    )  # fmt: skip
    text = configs.triton_config(info, configs.Batching(32, 0.0))
    config = text_format.Parse(text, mc.ModelConfig())
    lengths = config.input[1]
    assert list(lengths.dims) == [1] and list(lengths.reshape.shape) == []
    assert list(config.input[0].dims) == [-1]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    # ... and the client sends it as [B, 1], other inputs as they are.
    row = {"tokens": np.zeros((1, 32), np.int64), "lengths": np.array([32], np.int64)}
    (sent,) = configs.triton_rows(info, [row])
    assert sent["lengths"].shape == (1, 1) and sent["tokens"].shape == (1, 32)


def test_mlserver_settings(repository: Path, tmp_path: Path) -> None:
    info = from_repository(repository, "mlp")
    root = configs.write_mlserver_folder(tmp_path / "mls", [info], "127.0.0.1", 1, 2, 3, 0.0)
    settings = json.loads((root / "settings.json").read_text())
    assert (settings["host"], settings["grpc_port"], settings["http_port"]) == ("127.0.0.1", 1, 2)
    model = json.loads((root / "mlp" / "model-settings.json").read_text())
    module, cls = model["implementation"].rsplit(".", 1)
    runtime = (root / f"{module}.py").read_text()
    compile(runtime, "runtime", "exec")
    assert f"class {cls}(MLModel)" in runtime
    assert model["max_batch_size"] == 48 and model["max_batch_time"] == 0.0
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert (root / "mlp" / model["parameters"]["uri"]).is_file()
    # None: nnserve's own delay from model.json, in MLServer's unit (seconds).
    doc = configs.mlserver_model_settings(info, configs.Batching.of(info, None))
    assert doc["max_batch_time"] == pytest.approx(0.0015)


def test_pip_failure_names_the_missing_wheel() -> None:
    tail = ["ERROR: Could not find a version that satisfies the requirement mlserver==9.9",
            "ERROR: No matching distribution found for mlserver==9.9"]  # fmt: skip
    message = envs.pip_failure("mlserver", 1, tail)
    assert "no installable wheel for mlserver==9.9" in message
    assert "exit 7" in envs.pip_failure("triton", 7, ["ERROR: disk full"])


def _point(server: str, conc: int, ips: float, us: float, client: str = "bench") -> dict[str, Any]:
    return {"client": client, "server": server, "model": "mlp", "concurrency": conc,
            "inferences_per_s": ips, "p50_ms": 1000 / ips, "p99_ms": 2000 / ips,
            "server_cores": 1.0, "client_cores": 0.5, "server_us_per_request": us,
            "rounds": 3, "error_count": 0}  # fmt: skip


def test_table_marks_a_missing_peer_and_computes_ratios() -> None:
    doc = {
        "options": {
            "models": ["mlp"],
            "concurrency": [8],
            "servers": ["noop", "nnserve", "mlserver", "triton"],
            "rounds": 3,
        },
        "status": {
            "noop": "ok",
            "nnserve": "ok",
            "mlserver": "ok",
            "triton": "unavailable: no Python-backend stub for Python 3.99",
        },
        "points": [
            _point("noop", 8, 8000, 100),
            _point("nnserve", 8, 4000, 250),
            _point("mlserver", 8, 1000, 900),
            {
                "client": "bench-stream",
                "server": "mlserver",
                "model": "mlp",
                "concurrency": 8,
                "error": "boom",
                "rounds": 0,
            },
        ],
        "crashes": [
            {
                "server": "nnserve",
                "exit_code": -11,
                "log": "nnserve.crash1.log",
                "log_tail": "...",
                "signal": "Signal (11) received.",
            }
        ],
        "machine": {"cpus": 2},
        "pinning": {"client_cpus": [0], "server_cpus": [1]},
    }
    text = report.table(doc)
    lines = text.splitlines()
    triton = [ln for ln in lines if ln.startswith("bench (grpc.aio)") and "Triton" in ln]
    assert len(triton) == 1 and "unavailable" in triton[0]
    assert "no Python-backend stub for Python 3.99" in text
    noop = next(ln.split() for ln in lines if "no-op" in ln and ln.startswith("bench (grpc"))
    mls = next(ln.split() for ln in lines if "MLServer" in ln and ln.startswith("bench (grpc"))
    # no-op: 2x nnserve's throughput, 0.5x its p50; CPU ratio to itself 1.00
    assert noop[-5:-2] == ["2.00", "0.50", "1.00"]
    assert mls[-5:-2] == ["0.25", "4.00", "9.00"]
    assert "client side on CPU [0], servers on CPU [1]" in text
    # A point that failed shows as such, with its reason under the table; a crash too.
    failed = [ln for ln in lines if ln.startswith("bench, streams") and "MLServer" in ln]
    assert len(failed) == 1 and "failed" in failed[0]
    assert "failed: bench, streams x MLServer 1.7.1 c=8: boom" in text
    assert "nnserve exited (code -11) during the run and was restarted: Signal (11)" in text


def test_median_of_rounds() -> None:
    rounds = [_point("nnserve", 1, v, 100 + v) for v in (1000, 3000, 2000)]
    m = median_of(rounds)
    assert m["inferences_per_s"] == 2000 and m["server_us_per_request"] == 2100
    assert m["inferences_per_s_range"] == [1000, 3000] and m["rounds"] == 3
    failed = median_of([{"error": "exit 99: no"}])
    assert failed["rounds"] == 0 and failed["error"] == "exit 99: no"


def test_noop_floor_serves_and_is_measured(repository: Path, tmp_path: Path) -> None:
    from bench.loadgen import LoadGenerator
    from bench.peers.servers import start_noop

    info = from_repository(repository, "mlp")
    # The load process is spawned first (it imports grpc while the server starts), as in
    # bench.peers.run; otherwise a busy machine can make it miss a short window.
    with LoadGenerator(1) as gen:
        server = start_noop(repository, info, tmp_path)
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = pb.ModelInferRequest(model_name="mlp", id="req-7")
                response = stub.ModelInfer(request, timeout=5)
                assert response.id == "req-7"  # echoed for perf_analyzer's async mode
                assert [o.name for o in response.outputs] == ["probabilities", "logits"]
                assert len(response.raw_output_contents[0]) == 8  # 1 x 2 FP32
                config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=5).config
                assert config.max_batch_size == 48 and list(config.input[0].dims) == [4]
            workload = build_workload(info, "v2", sample_rows(info, 4))
            opts = PeerOptions(duration_s=1.0, warmup_s=0.5)
            point = loadgen_point(gen, server, workload.payloads, workload.method, 2, opts)
            assert point["requests"] > 0 and point["error_count"] == 0
            assert point["response_check"] == "ok"
            assert point["server_us_per_request"] > 0 and point["server_cores"] > 0
            # Over ModelStreamInfer: the floor echoes each id, so every answer is matched.
            streamed = loadgen_point(gen, server, workload.payloads, workload.method, 4, opts, 2)
            assert streamed["requests"] > 0 and streamed["error_count"] == 0
        finally:
            server.stop()
    assert server.process.poll() is not None


def test_request_id_and_noop_response() -> None:
    info = ModelInfo("m", "classify", (TensorSpec("x", "FP32", (-1, 3)),),
                     (TensorSpec("y", "INT64", (-1, 5)),))  # fmt: skip
    response = pb.ModelInferResponse.FromString(noop_response(info))
    assert list(response.outputs[0].shape) == [1, 5] and len(response.raw_output_contents[0]) == 40
    long_id = "x" * 300  # a two-byte length varint
    data = pb.ModelInferRequest(model_name="m", model_version="2", id=long_id).SerializeToString()
    assert request_id(data) == long_id.encode()
    assert request_id(pb.ModelInferRequest(model_name="m").SerializeToString()) == b""
