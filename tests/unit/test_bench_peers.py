"""The peers benchmark's pieces, without installing any peer: the generated Triton and
MLServer configurations, the table with a peer missing or failing, the results page,
medians of rounds and the no-op answer. (Both no-op servers answering for real:
tests/service/test_bench_peers_floor.py; tests/service/test_bench.py measures them.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from bench.harness import median_of
from bench.nullserver import noop_response, request_id
from bench.peers import configs
from bench.peers.__main__ import write_page
from bench.peers.servers import pip_failure
from bench.report import peers_table
from bench.workload import ModelInfo, from_repository
from contract.model import TensorSpec
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from tests.support.bench import peer_repository


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository with model.json and a stand-in model.onnx (the configs only copy it)."""
    return peer_repository(tmp_path)


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
    message = pip_failure("mlserver", 1, tail)
    assert "no installable wheel for mlserver==9.9" in message
    assert "exit 7" in pip_failure("triton", 7, ["ERROR: disk full"])


def _point(server: str, ips: float, us: float, client: str = "bench") -> dict[str, Any]:
    return {"client": client, "server": server, "model": "mlp", "concurrency": 8,
            "inferences_per_s": ips, "p50_ms": 1000 / ips, "p99_ms": 2000 / ips,
            "server_cores": 1.0, "client_cores": 0.5, "server_cpu_us_per_request": us,
            "rounds": 3, "error_count": 0}  # fmt: skip


def _doc() -> dict[str, Any]:
    """A peers run's document: Triton unavailable, the native no-op without streams, a
    failed point and a crash."""
    return {
        "options": {"models": ["mlp"], "concurrency": [8], "rounds": 3,
                    "servers": ["noop", "noop-native", "nnserve", "mlserver", "triton"]},
        "status": {"noop": "ok", "noop-native": "ok", "nnserve": "ok", "mlserver": "ok",
                   "triton": "unavailable: no Python-backend stub for Python 3.99"},
        "not_applicable": {"noop-native": {"bench-stream": "no bidirectional streams"}},
        "points": [
            _point("noop", 8000, 100), _point("noop-native", 16000, 40),
            _point("nnserve", 4000, 250), _point("mlserver", 1000, 900),
            _point("noop", 20000, 45, "bench-stream"), _point("nnserve", 9000, 110, "bench-stream"),
            {"client": "bench-stream", "server": "mlserver", "model": "mlp", "concurrency": 8,
             "error": "boom", "rounds": 0},
        ],
        "crashes": [{"server": "nnserve", "exit_code": -11, "log": "nnserve.crash1.log",
                     "signal": "Signal (11) received."}],
        "machine": {"cpus": 2},
        "pinning": {"client_cpus": [0], "server_cpus": [1]},
    }  # fmt: skip


def test_table_has_a_column_per_server_and_says_why_cells_are_empty() -> None:
    text = peers_table(_doc())
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("client"))
    labels = ["no-op grpc.aio", "no-op native", "nnserve aio", "MLServer 1.7.1",
              "Triton (Python backend)"]  # fmt: skip
    assert [header.index(label) for label in labels] == sorted(header.index(lb) for lb in labels)
    rows = [ln.split() for ln in lines if ln.split()[:1] in (["unary"], ["streams"])]
    unary, streams = rows
    # unary, c=8, infer/s: one value per server in column order; Triton could not run
    assert unary[:3] == ["unary", "8", "infer/s"]
    assert unary[3:] == ["8,000", "16,000", "4,000", "1,000", "unavailable"]
    assert streams[3:] == ["20,000", "n/a", "9,000", "failed", "unavailable"]
    cpu = next(ln.split() for ln in lines if ln.lstrip().startswith("srv us/req"))
    assert cpu[2:] == ["100", "40", "250", "900", "unavailable"]
    assert "Triton (Python backend): unavailable: no Python-backend stub for Python 3.99" in text
    assert "n/a: streams x no-op native: no bidirectional streams" in text
    assert "failed: streams x MLServer 1.7.1 c=8: boom" in text
    assert "nnserve aio exited (code -11) during the run and was restarted: Signal (11)" in text
    assert "client side on CPU [0], servers on CPU [1]" in text


def test_results_page_is_markdown_with_what_ran_where(tmp_path: Path) -> None:
    """--page: header (date, machine, commit, command), one markdown table per model, the
    notes as a list and the plot copied beside the page."""
    doc = _doc()
    doc.update(started_at="2026-12-06T03:00:00+00:00", finished_at="2026-12-06T03:20:00+00:00")
    doc["options"].update(plots=True)
    doc["machine"].update(cpu_model="Test CPU", python="3.11.7", git_commit="abc1234",
                          services_commit="abc1234 services: a change")  # fmt: skip
    doc["crashes"][0]["log"] = "/tmp/nnserve-peers-x/nnserve.crash1.log"
    doc["crashes"][0]["signal"] = ""
    doc["files"] = []
    out = tmp_path / "results"
    out.mkdir()
    (out / "peers-latest-mlp.png").write_bytes(b"png")
    page = tmp_path / "docs" / "benchmark-results.md"
    argv = ["--repository", "model_repository", "--page", "docs/benchmark-results.md"]
    write_page(doc, page, argv, out)
    text = page.read_text()
    assert text.startswith("# Benchmark results\n")
    for expected in (
        "| date | 2026-12-06T03:00:00+00:00 to 2026-12-06T03:20:00+00:00 (UTC) |",
        "| machine | Test CPU, 2 CPUs; python 3.11.7 |",
        "| commit | abc1234 (last change to services/: abc1234 services: a change) |",
        "| command | `python -m bench.peers --repository model_repository --page ",
    ):
        assert expected in text, expected  # fmt: skip
    header = "| client | conc | figure | no-op grpc.aio | no-op native | nnserve aio |"
    assert header in text
    assert "| unary | 8 | infer/s | 8,000 | 16,000 | 4,000 | 1,000 | unavailable |" in text
    assert "- failed: streams x MLServer 1.7.1 c=8: boom" in text
    assert "restarted: see nnserve.crash1.log" in text and "/tmp/" not in text
    assert "![mlp: " in text and "(images/peers-mlp.png)" in text
    assert (page.parent / "images" / "peers-mlp.png").read_bytes() == b"png"


def test_median_of_rounds() -> None:
    rounds = [_point("nnserve", v, 100 + v) for v in (1000, 3000, 2000)]
    m = median_of(rounds)
    assert m["inferences_per_s"] == 2000 and m["server_cpu_us_per_request"] == 2100
    assert m["inferences_per_s_range"] == [1000, 3000] and m["rounds"] == 3
    failed = median_of([{"error": "exit 99: no"}])
    assert failed["rounds"] == 0 and failed["error"] == "exit 99: no"


def test_request_id_and_noop_response() -> None:
    info = ModelInfo("m", "classify", (TensorSpec("x", "FP32", (-1, 3)),),
                     (TensorSpec("y", "INT64", (-1, 5)),))  # fmt: skip
    response = pb.ModelInferResponse.FromString(noop_response(info))
    assert list(response.outputs[0].shape) == [1, 5] and len(response.raw_output_contents[0]) == 40
    long_id = "x" * 300  # a two-byte length varint
    data = pb.ModelInferRequest(model_name="m", model_version="2", id=long_id).SerializeToString()
    assert request_id(data) == long_id.encode()
    assert request_id(pb.ModelInferRequest(model_name="m").SerializeToString()) == b""
