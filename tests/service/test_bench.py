"""The benchmark on a tiny MLP made here: the harness's launcher with each front end, a
quick `python -m bench` run, a one-round `python -m bench.peers` run and a one-round
`python -m bench.shadow` run against real servers. (The parsers and the target checks:
tests/unit/test_bench_parsing.py.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.support.paths import ROOT

# The benchmark starts its own servers with the front ends it measures.
pytestmark = pytest.mark.frontends("native")

FEATURES = ["age", "years_experience", "income", "debt_ratio"]


def _tiny_mlp(path: Path) -> None:
    """features (B, 4) -> 8 -> 2 logits, softmax probabilities; fixed seeded weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(4, 8)).astype(np.float32)
    w2 = rng.normal(size=(8, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
        ],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding one tiny `mlp` in the model.json contract."""
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("repo")
    version = root / "mlp" / "1"
    version.mkdir(parents=True)
    onnx_path = version / "model.onnx"
    _tiny_mlp(onnx_path)
    x = np.random.default_rng(0).normal(size=(3, len(FEATURES))).astype(np.float32)
    probabilities, logits = ort.InferenceSession(str(onnx_path)).run(None, {"features": x})
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": "mlp",
        "version": 1,
        "family": "mlp",
        "task": "classify",
        "description": "tiny test MLP",
        "created_at": "2026-01-01T00:00:00Z",
        "onnx": {
            "file": "model.onnx",
            "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            "opset": 17,
            "ir_version": 8,
        },
        "producer": {"nnserve": "0.1.0", "onnxruntime": ort.__version__},
        "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, len(FEATURES)]}],
        "outputs": [
            {"name": "probabilities", "dtype": "FP32", "shape": [-1, 2]},
            {"name": "logits", "dtype": "FP32", "shape": [-1, 2]},
        ],
        "labels": ["rejected", "approved"],
        "classify": {
            "input": "features",
            "scores_output": "probabilities",
            "kind": "tabular",
            "features": [
                {"name": n, "unit": "", "mean": 0.0, "std": 1.0, "min": -5, "max": 5}
                for n in FEATURES
            ],
        },
        "metrics": {"split": "none", "accuracy": 0.5, "f1": 0.5, "train_seconds": 0.0},
        "serving": {
            "device_policy": "allow_cpu_fallback",
            "max_batch_size": 64,
            "max_queue_delay_ms": 2.0,
        },
        "goldens": {
            "atol": 1e-4,
            "rtol": 1e-3,
            "cases": [
                {
                    "name": "b3",
                    "inputs": {"features": {"shape": list(x.shape), "data": x.ravel().tolist()}},
                    "outputs": {
                        "probabilities": {"shape": [3, 2], "data": probabilities.ravel().tolist()},
                        "logits": {"shape": [3, 2], "data": logits.ravel().tolist()},
                    },
                }
            ],
        },
    }
    (version / "model.json").write_text(json.dumps(doc))
    return root


def test_quick_run_writes_expected_json(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench", "--repository", str(repository), "--models", "mlp",
        "--quick", "--concurrency", "1,8", "--duration", "1s", "--warmup", "0.3s",
        "--out", str(out), "--apis", "v2,domain,v2-stream", "--stream-window", "4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "infer/s" in proc.stdout  # the table was printed

    doc = json.loads((out / "latest.json").read_text())
    for key in ("machine", "options", "workload", "loadgen", "target", "memory", "floor", "points"):
        assert key in doc, key
    assert doc["machine"]["cpus"] >= 1

    assert sorted(f["batch"] for f in doc["floor"]) == [1, 32]
    assert all(f["inferences_per_s"] > 0 and f["p50_ms"] > 0 for f in doc["floor"])

    points = {(p["api"], p["concurrency"]): p for p in doc["points"]}
    assert set(points) == {(api, c) for api in ("v2", "domain", "v2-stream") for c in (1, 8)}
    # ModelStreamInfer: ceil(concurrency / window) streams, every answer matched by id.
    assert points[("v2-stream", 1)]["streams"] == 1 and points[("v2-stream", 8)]["streams"] == 2
    for p in points.values():
        assert p["model"] == "mlp"
        assert p["requests"] > 0 and p["inferences_per_s"] > 0
        assert p["error_count"] == 0, p["error_example"]
        assert p["response_check"] == "ok"
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
        assert p["server_cores"] > 0 and p["client_cores"] > 0
        assert p["mean_batch_size"] >= 1  # read from the service's /metrics

    memory = doc["memory"]["after_load"]
    assert memory["total"]["rss_mib"] > 10 and "classify" in memory["services"]
    assert any(t["target"].startswith("mlp v2 c1 p50") for t in doc["targets"])
    assert (out / "latest-throughput.png").stat().st_size > 0
    assert (out / "latest-p99.png").stat().st_size > 0


@pytest.mark.parametrize("front", ["aio", "native"])
def test_launcher_reads_the_ports_file_and_passes_the_front_end(
    repository: Path, tmp_path: Path, front: str
) -> None:
    """Port 0: the address comes from the ports file the service writes once bound; the
    front end goes in as NNSERVE_FRONTEND; stop() ends the process tree."""
    from bench.harness import front_end, start_service, wait_ready

    server = start_service("classify", repository, tmp_path, ["mlp"], frontend=front)
    try:
        wait_ready(server, timeout_s=60)
        port = int(server.address.rpartition(":")[2])
        assert port > 0 and server.metrics_port > 0
        assert "nnserve_batch_size" in server.scrape()
        assert front_end(server) == front  # what the service says it runs
        assert server.process.pid in server.pids()
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_peers_run_measures_both_front_ends_and_the_no_op_floors(
    repository: Path, tmp_path: Path
) -> None:
    """One short round of `python -m bench.peers` over the servers that need no install:
    every server answers unary and streamed points without errors, except the native
    no-op's streams, which it cannot serve (n/a in the table, not a failure)."""
    out = tmp_path / "results"
    servers = ["noop", "noop-native", "nnserve", "nnserve-native"]
    cmd = [
        sys.executable, "-m", "bench.peers", "--repository", str(repository),
        "--servers", ",".join(servers), "--rounds", "1", "--concurrency", "2",
        "--duration", "0.5s", "--warmup", "0.2s", "--no-perf-analyzer", "--out", str(out),
        "--page", str(tmp_path / "docs" / "benchmark-results.md"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    doc = json.loads((out / "peers-latest.json").read_text())
    assert doc["status"] == dict.fromkeys(servers, "ok")
    assert doc["front_ends"] == {"nnserve": "aio", "nnserve-native": "native"}
    points = {(p["client"], p["server"]): p for p in doc["points"]}
    streamed = [s for s in servers if s != "noop-native"]
    assert set(points) == {("bench", s) for s in servers} | {("bench-stream", s) for s in streamed}
    for p in points.values():
        assert p["rounds"] == 1 and p["error_count"] == 0, p
        assert p["inferences_per_s"] > 0 and p["server_cpu_us_per_request"] > 0
        assert "response_check" not in p  # every answer well formed
    assert "bench-stream" in doc["not_applicable"]["noop-native"]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("client"))
    for label in ("no-op grpc.aio", "no-op native", "nnserve aio", "nnserve native"):
        assert label in header
    streams = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("streams")]
    assert streams and streams[0][-3] == "n/a"  # the native no-op's column
    assert (out / "peers-latest-mlp.png").stat().st_size > 0
    # --page: the markdown report, headed by what ran where, with the plot beside it
    page = (tmp_path / "docs" / "benchmark-results.md").read_text()
    assert page.startswith("# Benchmark results") and "| command | `python -m bench.peers " in page
    assert f"| commit | {doc['machine']['git_commit']}" in page
    assert "| client | conc | figure | no-op grpc.aio | no-op native | nnserve aio |" in page
    assert "(images/peers-mlp.png)" in page
    assert (tmp_path / "docs" / "images" / "peers-mlp.png").stat().st_size > 0


def test_shadow_bench_measures_both_servers_and_only_one_mirrors(
    repository: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench.shadow", "--repository", str(repository), "--rounds", "1",
        "--concurrency", "1,4", "--duration", "1", "--warmup", "0.3", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "p99 ms" in proc.stdout  # the table was printed
    doc = json.loads((out / "latest-shadow.json").read_text())
    rows = {(r["concurrency"], r["mode"]): r for r in doc["summary"]}
    assert set(rows) == {(c, m) for c in (1, 4) for m in ("off", "on")}
    for (_, mode), row in rows.items():
        assert row["inferences_per_s"] > 0 and row["error_count"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        if mode == "off":
            assert row["shadow_compared"] == 0 and row["shadow_dropped"] == 0
        else:  # the on server mirrored what it answered in the window (and a bit more)
            assert row["shadow_compared"] + row["shadow_dropped"] > 0
