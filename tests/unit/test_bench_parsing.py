"""The benchmark's parsers and its target checks, without running it (the runs against real
servers: tests/service/test_bench.py)."""

from __future__ import annotations

import numpy as np
import pytest


def test_duration_and_list_parsing() -> None:
    from bench.__main__ import duration, int_list, name_list

    assert duration("5") == 5.0 and duration("5s") == 5.0
    assert duration("250ms") == pytest.approx(0.25) and duration("2m") == 120.0
    assert int_list("1,8, 32") == [1, 8, 32]
    assert name_list('["mlp", "cnn"]') == ["mlp", "cnn"] == name_list("mlp,cnn")


def test_perf_analyzer_csv_and_input_data() -> None:
    from bench.perf_analyzer import input_data, parse_csv

    text = (
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
        "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
        "p50 latency,p90 latency,p95 latency,p99 latency\n"
        "1,2205.74,1,450,0,0,0,0,0,449,488,506,652\n"
    )
    [point] = parse_csv(text)
    assert point["concurrency"] == 1 and point["inferences_per_s"] == 2205.7
    assert point["p50_ms"] == pytest.approx(0.449) and point["p99_ms"] == pytest.approx(0.652)

    row = {"tokens": np.arange(32, dtype=np.int64)[None, :], "lengths": np.array([32])}
    data = input_data([row])["data"][0]
    assert data["tokens"] == {"content": list(range(32)), "shape": [32]}
    assert data["lengths"] == [32]  # batch-only input: shape left to the server's metadata


def test_targets_flag_misses() -> None:
    from bench.report import targets as evaluate

    base = {"p90_ms": 1.0, "errors": {}, "error_count": 0}
    points = [
        {**base, "model": "mlp", "api": "v2", "concurrency": 1, "p50_ms": 0.5, "p99_ms": 1.0,
         "inferences_per_s": 2000.0},
        {**base, "model": "mlp", "api": "v2", "concurrency": 32, "p50_ms": 5.0, "p99_ms": 20.0,
         "inferences_per_s": 6000.0},
        {**base, "model": "mlp", "api": "domain", "concurrency": 32, "p50_ms": 5.0,
         "p99_ms": 9.0, "inferences_per_s": 4800.0},
    ]  # fmt: skip
    result = {c["target"]: c["ok"] for c in evaluate(points)}
    assert result["mlp v2 c1 p50 ms"] is True
    assert result["mlp v2 c32 inferences/s"] is True
    assert result["mlp v2 c32 p99 ms"] is False
    assert result["mlp domain c32 inferences/s"] is False
    assert result["mlp domain/v2 c32 throughput"] is False  # 0.8 < 0.85
