"""Bringing the compose stack up for a test: the shipped compose files plus a generated
override that adapts them to a machine without a public image registry.

The override changes only what such a machine needs:
- images build on the local Debian base (the Dockerfiles' base-image build argument), on
  the host network;
- Prometheus is Debian's package built into an image on the same base
  (docker/prometheus-debian.Dockerfile), with the stack's config and rules mounted as
  shipped;
- the trainer, whose torch index may be unreachable, is replaced by a one-shot container
  that copies the models the test session exported into the model_repository volume;
- published ports move to loopback, on ports Docker picks ("127.0.0.1::9090"), read back
  with `docker compose port` once the stack is up; Grafana is not started.

The stack tests run with `make stack-test` (NNSERVE_STACK_TEST=1); without an engine they
skip loudly, and fail in CI.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker_engine import BASE_IMAGE, DockerEngine, log
from tests.support.paths import ROOT
from tests.support.tools import compose_binary, missing_tool

PROMETHEUS_IMAGE = "nnserve-local/prometheus:2.42"
SERVING_IMAGE = "nnserve/serving:0.1.0"
TIMINGS: dict[str, float] = {}


# A published port: (service, port in its container).
Published = tuple[str, int]


@dataclass
class Stack:
    engine: DockerEngine
    compose: list[str]
    ports: dict[str, int] = field(default_factory=dict)  # name -> host port on 127.0.0.1
    timings: dict[str, float] = field(default_factory=dict)

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def run(self, *args: str, check: bool = True) -> Any:
        return self.engine.run([*self.compose, *args], cwd=ROOT, check=check)

    def published_port(self, service: str, container_port: int) -> int:
        """The loopback port Docker published `container_port` of `service` on."""
        out = self.run("port", service, str(container_port)).stdout.strip()
        return int(out.splitlines()[0].rpartition(":")[2])

    def containers(self) -> list[dict[str, Any]]:
        """`docker compose ps --all` as one dict per container."""
        out = self.run("ps", "--all", "--format", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def prometheus(self, path: str, **params: str) -> Any:
        url = f"http://{self.address('prometheus')}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A Docker engine with the local base image, for the whole session."""
    if os.environ.get("NNSERVE_STACK_TEST") != "1":
        pytest.skip("the compose stack tests run with `make stack-test` (NNSERVE_STACK_TEST=1)")
    reason = DockerEngine.unavailable_reason()
    if reason is not None:
        print(f"\n{'!' * 78}\nCOMPOSE STACK TESTS NOT RUN: {reason}\n{'!' * 78}", file=sys.stderr)
        missing_tool("a Docker engine", reason)
    began = time.monotonic()
    with DockerEngine.start_private() as engine:
        TIMINGS["engine start"] = time.monotonic() - began
        step = time.monotonic()
        engine.ensure_base_image()
        TIMINGS["base image"] = time.monotonic() - step
        yield engine
    log("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))


def build_args(image_arg: str = "PYTHON_IMAGE") -> str:
    return f"""
    build:
      network: host
      args:
        {image_arg}: {BASE_IMAGE}"""


def published(*container_ports: int) -> str:
    """A `ports: !override` list publishing each port on 127.0.0.1, on a port Docker picks."""
    lines = "".join(f'\n      - "127.0.0.1::{port}"' for port in container_ports)
    return f"""
    ports: !override{lines}"""


def seed_and_prometheus(seed: Path) -> str:
    """The override's trainer stand-in and Prometheus image (every variant needs them)."""
    return f"""
  trainer:
    build: !reset null
    image: {BASE_IMAGE}
    pull_policy: never
    user: "0:0"
    command: ["sh", "-c", "cp -r /seed/. /models/ && chown -R 10001:10001 /models"]
    volumes: !override
      - type: volume
        source: model_repository
        target: /models
      - type: bind
        source: {seed}
        target: /seed
        read_only: true
  prometheus:
    image: {PROMETHEUS_IMAGE}
    pull_policy: never{build_args("DEBIAN_IMAGE")}
      context: .
      dockerfile: docker/prometheus-debian.Dockerfile{published(9090)}
"""


@contextmanager
def compose_up(
    engine: DockerEngine,
    name: str,
    compose_files: Sequence[str],
    override: str,
    ports: dict[str, Published],
    services: Sequence[str],
    build: Sequence[str],
) -> Iterator[Stack]:
    """Builds `build`, runs `up --wait` for `services`, reads back the host ports of
    `ports` (name -> (service, container port)), and always ends with `down -v`."""
    with tempfile.TemporaryDirectory() as tmp:
        override_file = Path(tmp) / "docker-compose.test.yml"
        override_file.write_text(override)
        compose = [
            str(compose_binary()),
            "--project-name",
            f"nnserve-{name}-{os.getpid()}",
            "--project-directory",
            str(ROOT),
            *(arg for path in compose_files for arg in ("-f", str(ROOT / path))),
            "-f",
            str(override_file),
        ]
        stack = Stack(engine, compose)
        step = time.monotonic()
        engine.run([*compose, "build", *build], cwd=ROOT, timeout=1800)
        TIMINGS[f"{name}: build {' '.join(build)}"] = time.monotonic() - step
        try:
            step = time.monotonic()
            stack.run("up", "--detach", "--wait", "--no-build", "--wait-timeout", "300", *services)
            TIMINGS[f"{name}: up --wait"] = time.monotonic() - step
            for key, (service, container_port) in ports.items():
                stack.ports[key] = stack.published_port(service, container_port)
            log(f"{name} published ports: {stack.ports}")
            yield stack
        finally:
            logs = stack.run("logs", "--no-color", "--tail", "30", check=False)
            if logs.returncode == 0:
                log(f"{name} compose logs (tail):\n{logs.stdout[-5000:]}")
            step = time.monotonic()
            stack.run("down", "--volumes", "--timeout", "30", check=False)
            TIMINGS[f"{name}: down -v"] = time.monotonic() - step
