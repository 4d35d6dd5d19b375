"""One virtualenv per peer server, created on first use and reused while its pins stand.

MLServer and nvidia-pytriton pin protobuf and grpcio versions that clash with nnserve's,
so each lives in its own environment under bench/.cache/peers/<name>/ (git-ignored).
A stamp file records the requirements and the Python that built it; a mismatch, or a
half-made environment without the stamp, is rebuilt from scratch. pip's progress is
logged line by line; a wheel that cannot be had ends in PeerUnavailable naming it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench")

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "peers"
STAMP = ".nnserve-peer-env"
_PROGRESS = re.compile(r"^(Collecting|Downloading|Installing|Successfully|ERROR)")
_NO_WHEEL = re.compile(r"No matching distribution found for (\S+)")


class PeerUnavailable(RuntimeError):
    """A peer cannot be installed or started here; the message says exactly why."""


@dataclass(frozen=True)
class EnvSpec:
    name: str
    requirements: tuple[str, ...]
    imports: tuple[str, ...]  # modules that must import once installed

    def stamp(self) -> str:
        text = "\n".join([sys.version, *self.requirements])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


ONNXRUNTIME = "onnxruntime==1.31.1"  # the build nnserve serves with (pyproject extra `cpu`)
ENVS = {
    # uvloop 0.22+ raises from asyncio.get_event_loop() outside a running loop, which
    # MLServer 1.7.1's inference-pool workers call at start (they die in a restart loop).
    "mlserver": EnvSpec(
        "mlserver",
        ("mlserver==1.7.1", ONNXRUNTIME, "uvloop==0.21.0"),
        ("mlserver", "onnxruntime"),
    ),
    # The wheel bundles the tritonserver binary, its libraries and the Python-backend
    # stubs; ONNX Runtime is for the Python-backend model.py.
    "triton": EnvSpec(
        "triton", ("nvidia-pytriton==0.7.0", ONNXRUNTIME), ("pytriton", "onnxruntime")
    ),
}


@dataclass(frozen=True)
class PeerEnv:
    name: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def site_packages(self) -> Path:
        found = sorted(self.root.glob("lib/python3*/site-packages"))
        if not found:
            raise PeerUnavailable(f"{self.name} environment has no site-packages in {self.root}")
        return found[0]


def _pip_install(python: Path, requirements: tuple[str, ...], name: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--progress-bar", "off",
           "--disable-pip-version-check", *requirements]  # fmt: skip
    log.info("[%s env] pip install %s", name, " ".join(requirements))
    tail: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if _PROGRESS.match(line):
                log.info("[%s env] %s", name, line[:160])
        code = proc.wait()
    if code != 0:
        raise PeerUnavailable(pip_failure(name, code, tail))


def pip_failure(name: str, code: int, tail: list[str]) -> str:
    """What went wrong, from the last lines pip printed: the missing wheel when that is it."""
    missing = _NO_WHEEL.search("\n".join(tail))
    if missing:
        return (
            f"{name}: no installable wheel for {missing.group(1)} for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} on this platform "
            "(pip: No matching distribution found)"
        )
    last = " | ".join(t for t in tail[-3:] if t)
    return f"{name}: pip install failed (exit {code}): {last}"


def ensure(spec: EnvSpec, cache: Path = CACHE) -> PeerEnv:
    """The peer's environment, created (minutes, once) or reused when its stamp matches."""
    env = PeerEnv(spec.name, cache / spec.name)
    stamp = env.root / STAMP
    if stamp.exists() and stamp.read_text().strip() == spec.stamp() and env.python.exists():
        log.info("[%s env] cached in %s", spec.name, env.root)
        return env
    if env.root.exists():
        log.info("[%s env] stale or incomplete: rebuilding %s", spec.name, env.root)
        shutil.rmtree(env.root)
    log.info("[%s env] creating %s (first use: a few minutes)", spec.name, env.root)
    env.root.parent.mkdir(parents=True, exist_ok=True)
    # The base interpreter, not this virtualenv: the peer must not see nnserve's packages.
    base = Path(getattr(sys, "_base_executable", sys.executable))
    done = subprocess.run(
        [str(base), "-m", "venv", str(env.root)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise PeerUnavailable(f"{spec.name}: python -m venv failed: {done.stderr.strip()[-300:]}")
    _pip_install(env.python, spec.requirements, spec.name)
    check = "; ".join(f"import {m}" for m in spec.imports)
    done = subprocess.run([str(env.python), "-c", check], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["?"]
        raise PeerUnavailable(f"{spec.name}: installed but `{check}` fails: {last[0]}")
    stamp.write_text(spec.stamp() + "\n")
    log.info("[%s env] ready", spec.name)
    return env
