"""Which ONNX Runtime build the virtualenv gets (Makefile ORT=auto|gpu|cpu, decided by
bench/ort_build.sh), and the GPU check's refusal on a machine without CUDA (its CPU
paths end to end: tests/service/test_gpu_check.py).

The venv step is planned with `make -n` against the real Makefile and script, so nothing
is installed (the GPU wheel is 256 MB). The `nvidia-smi` found on PATH here is a small
stub: it stands for the NVIDIA driver, which cannot run on this machine. nvidia-smi is
the driver's own tool, and the decision rests only on its exit status and its `-L` list,
so the stubs reproduce what it prints with a GPU, with a broken driver, with no device,
and when it hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest

from tests.support.paths import ROOT

CUDA = "CUDAExecutionProvider"

# What the real nvidia-smi -L prints (and its exit status) in each situation.
STUBS = {
    "gpu": 'echo "GPU 0: NVIDIA H200 (UUID: GPU-5c6d1f0e-8b7a-4c3d-9e2f-0a1b2c3d4e5f)"',
    "driver_broken": (
        "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
        'driver. Make sure that the latest NVIDIA driver is installed and running."; exit 9'
    ),
    "no_device": 'echo "No devices were found"; exit 6',
    "hangs": "exec sleep 30",  # one process, as nvidia-smi is
}
# What the Makefile's $(shell ...) lines and the script call.
TOOLS = ("sh", "cat", "sha256sum", "cut", "timeout", "grep", "sleep")


def _path_with(tmp_path: Path, stub: str | None) -> str:
    """A PATH holding the tools the Makefile needs and, if given, an nvidia-smi stub."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by the Makefile"
        (bin_dir / tool).symlink_to(found)
    if stub is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\n{STUBS[stub]}\n")
        smi.chmod(0o755)
    return str(bin_dir)


def _make(tmp_path: Path, stub: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make, "make is needed (the README's entry point)"
    env = {"PATH": _path_with(tmp_path, stub), "HOME": str(tmp_path), "NVIDIA_SMI_TIMEOUT": "1"}
    return subprocess.run(
        [make, "--no-print-directory", "-C", str(ROOT), *args, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("stub", "ort_choice", "build"),
    [
        ("gpu", "auto", "gpu"),
        ("driver_broken", "auto", "cpu"),
        ("no_device", "auto", "cpu"),
        ("hangs", "auto", "cpu"),
        (None, "auto", "cpu"),
        ("gpu", "cpu", "cpu"),
        (None, "gpu", "gpu"),
    ],
)
def test_venv_step_installs_the_build_the_machine_calls_for(
    tmp_path: Path, stub: str | None, ort_choice: str, build: str
) -> None:
    started = time.monotonic()
    plan = _make(tmp_path, stub, "-n", "venv", f"ORT={ort_choice}")
    assert plan.returncode == 0, plan.stderr
    assert time.monotonic() - started < 20  # a hanging nvidia-smi is cut short
    installs = [line for line in plan.stdout.splitlines() if "pip install --quiet -e" in line]
    assert len(installs) == 1, plan.stdout
    if build == "gpu":
        assert "'.[gpu,cuda,train,dev]'" in installs[0]
        # Where the CPU build is there, both go before the GPU build is installed whole.
        assert "pip show --quiet onnxruntime >" in plan.stdout
        assert "pip uninstall --quiet --yes onnxruntime onnxruntime-gpu" in plan.stdout
    else:
        assert "'.[cpu,train,dev]'" in installs[0]
        assert "pip show --quiet onnxruntime-gpu >" in plan.stdout
        assert "pip uninstall --quiet --yes onnxruntime-gpu onnxruntime" in plan.stdout
    # The stamp names the build: changing ORT re-runs the step.
    assert f"touch {tmp_path / 'venv'}/.installed-{build}-" in plan.stdout
    assert not (tmp_path / "venv").exists()


def test_unknown_ort_value_is_refused(tmp_path: Path) -> None:
    plan = _make(tmp_path, None, "-n", "venv", "ORT=cuda")
    assert plan.returncode != 0
    assert "ORT must be auto, gpu or cpu" in plan.stderr


@pytest.mark.parametrize("stub", ["driver_broken", None])
def test_make_gpu_check_without_a_gpu_fails_at_once(tmp_path: Path, stub: str | None) -> None:
    started = time.monotonic()
    run = _make(tmp_path, stub, "gpu-check")
    assert run.returncode != 0
    assert "make gpu-check needs an NVIDIA GPU" in run.stderr
    assert time.monotonic() - started < 10
    assert not (tmp_path / "venv").exists()  # nothing installed, nothing trained


def test_gpu_check_without_cuda_exits_non_zero_quickly(tmp_path: Path) -> None:
    """The check itself, without --allow-cpu: the CPU build fails its first check; the
    GPU build with no GPU visible (CUDA_VISIBLE_DEVICES empty) fails the driver check."""
    out = tmp_path / "report.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--repository", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert time.monotonic() - started < 30
    failed = [c for c in json.loads(out.read_text())["checks"] if c["ok"] is False]
    if CUDA in ort.get_available_providers():
        assert [c["check"] for c in failed] == ["the CUDA driver reports a GPU"]
        assert "1 passed, 1 failed" in run.stdout  # the build offers CUDA
    else:
        assert [c["check"] for c in failed] == ["onnxruntime offers CUDAExecutionProvider"]
        assert "install onnxruntime-gpu" in run.stdout
        assert "0 passed, 1 failed" in run.stdout
