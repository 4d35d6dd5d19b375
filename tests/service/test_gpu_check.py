"""The GPU check's CPU paths end to end on a machine without CUDA: a real model repository
and a short served point with two workers (the build planning: tests/unit/test_gpu_build.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from tests.support.paths import ROOT
from tests.support.tools import gpu_listed

# The GPU check starts its own servers.
pytestmark = pytest.mark.frontends("native")

CUDA = "CUDAExecutionProvider"


def test_gpu_check_cpu_paths_run_end_to_end(model_repository: Path, tmp_path: Path) -> None:
    """Every step of the check on this machine (--allow-cpu): services, providers and
    fallback, outputs, placement, a short served point with two workers; so all it
    imports exists and its report and markdown tables come out."""
    out = tmp_path / "gpu-check.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "bench.gpu_check", "--repository", str(model_repository),
            "--allow-cpu", "--quick", "--models", "mlp", "--workers", "2", "--clients", "1",
            "--mlp-concurrency", "4", "--duration", "0.5", "--out", str(out),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert not [c for c in doc["checks"] if c["ok"] is False]
    gpu_build = CUDA in ort.get_available_providers()
    if gpu_build and gpu_listed():
        assert doc["served"]["mlp"] == {"provider": CUDA, "fallback": ""}
    else:
        reason = "no_gpu" if gpu_build else "cuda_not_in_build"
        assert doc["served"]["mlp"] == {"provider": "CPUExecutionProvider", "fallback": reason}
    [point] = doc["throughput"]
    assert point["model"] == "mlp" and point["requests"] > 0 and point["error_count"] == 0
    # Batches counted from the workers' aggregated metrics, by provider.
    assert point["batches_cpu"] + point["batches_cuda"] > 0 and point["mean_batch"] >= 1
    markdown = out.with_suffix(".md").read_text()
    for title in ("**Models:", "**`measure` policy", "**Latency", "**Served throughput"):
        assert title in markdown
    assert "| mlp | 4 |" in markdown
