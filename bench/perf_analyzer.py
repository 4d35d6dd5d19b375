"""Triton's perf_analyzer, a C++ client, as a cross-check on bench's Python one.

There is no usable PyPI package (`perf-analyzer` is an empty placeholder), so the binary
comes from the tritonclient 2.41.1 manylinux wheel into bench/.cache/perf_analyzer/. It
links libb64.so.0d (Debian's libb64-0d: apt-get install as root, else apt-get download
+ dpkg-deb -x into the cache) and libcudart.so.12 (only loaded; from the
nvidia-cuda-runtime-cu12 wheel), found through LD_LIBRARY_PATH.

    python -m bench.perf_analyzer      # fetch and check; prints where it is

Its numbers are compared with each other, never with bench's own points.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import ModelInfo, Row

log = logging.getLogger("bench")

CACHE = Path(__file__).resolve().parent / ".cache" / "perf_analyzer"
# (requirement, wheel platform, member) of the binary and of the CUDA runtime it loads.
BINARY = (
    "tritonclient==2.41.1",
    "manylinux1_x86_64",
    "tritonclient-2.41.1.data/data/bin/perf_analyzer",
)
CUDART = (
    "nvidia-cuda-runtime-cu12>=12,<13",
    "manylinux2014_x86_64",
    "nvidia/cuda_runtime/lib/libcudart.so.12",
)
LIBB64_PACKAGE, LIBB64 = "libb64-0d", "libb64.so.0d"
STABILITY_PCT = 25  # perf_analyzer's default is 10; 25 is reachable on a shared 2-core box
# perf_analyzer (2.41) takes per-request shapes from ModelMetadata less the batch axis; an
# input declared [-1] leaves an empty shape, which it refuses.
EMPTY_SHAPE_HINT = (
    "perf_analyzer needs a non-batch dimension per input; report a batch-only input as "
    "Triton does, dims [1] with reshape [] (metadata [-1, 1]), and accept [B, 1]"
)


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot be fetched or run here; the message says exactly why."""


@dataclass(frozen=True)
class Tool:
    binary: Path
    lib_dirs: tuple[Path, ...]

    def env(self) -> dict[str, str]:
        paths = [*map(str, self.lib_dirs), os.environ.get("LD_LIBRARY_PATH", "")]
        return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in paths if p)}

    def version(self) -> str:
        cmd = [str(self.binary), "--version"]
        out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=30)
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[-1] if lines else ""


def _run(cmd: list[str], **kwargs: Any) -> None:
    log.info("perf_analyzer setup: %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerUnavailable(f"{cmd[0]} {cmd[1]}: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        what = " ".join(cmd[:3])
        raise PerfAnalyzerUnavailable(f"{what} failed (exit {done.returncode}): {tail}")


def _from_wheel(requirement: str, platform: str, member: str, target: Path) -> None:
    """`member` of the wheel `pip download` fetches for `requirement`, as `target`."""
    wheels = CACHE / "wheels"
    prefix = requirement.split("=")[0].split(">")[0].replace("-", "_").lower()

    def found() -> list[Path]:
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix))

    if not found():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3", "--implementation", "py",
               "--platform", platform]  # fmt: skip
        _run([*pip, "-d", str(wheels), requirement])
    if not found():
        raise PerfAnalyzerUnavailable(f"pip download {requirement} left no wheel in {wheels}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found()[-1]) as zf:
        if member not in zf.namelist():
            raise PerfAnalyzerUnavailable(f"{found()[-1].name} has no {member}")
        with zf.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def _libb64() -> Path | None:
    """A directory holding libb64.so.0d, or None when the system has it."""
    local = CACHE / "libb64" / "usr" / "lib" / "x86_64-linux-gnu"
    if (local / LIBB64).exists():
        return local
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30)
    if LIBB64 in ldconfig.stdout:
        return None
    if shutil.which("apt-get") is None:
        raise PerfAnalyzerUnavailable(
            f"{LIBB64} is missing and there is no apt-get to install "
            f"{LIBB64_PACKAGE} (perf_analyzer links it)"
        )
    if os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "install", "-y", "--no-install-recommends", LIBB64_PACKAGE], env=env)
        return None
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", LIBB64_PACKAGE], cwd=debs)
    for deb in sorted(debs.glob(f"{LIBB64_PACKAGE}_*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(CACHE / "libb64")])
    if not (local / LIBB64).exists():
        raise PerfAnalyzerUnavailable(f"apt-get download {LIBB64_PACKAGE} gave no {LIBB64}")
    return local


def ensure() -> Tool:
    """Fetch (once) and check the binary and its libraries; PerfAnalyzerUnavailable if not."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise PerfAnalyzerUnavailable("the tritonclient wheel's perf_analyzer is linux x86_64 only")
    binary, cudart = CACHE / "bin" / "perf_analyzer", CACHE / "lib" / "libcudart.so.12"
    if not binary.exists():
        _from_wheel(*BINARY, binary)
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if not cudart.exists():
        _from_wheel(*CUDART, cudart)
    b64 = _libb64()
    tool = Tool(binary, (cudart.parent,) + ((b64,) if b64 else ()))
    ldd = subprocess.run(["ldd", str(binary)], env=tool.env(), capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        raise PerfAnalyzerUnavailable(f"perf_analyzer still lacks {', '.join(missing)} (ldd)")
    return tool


# ---------------------------------------------------------------------- running


def input_data(rows: list[Row]) -> dict[str, Any]:
    """--input-data JSON: the request pool, shapes without the batch axis. A batch-only
    input (e.g. `lengths`, shape [B]) goes as a plain list: its shape is the server's."""

    def entry(value: Any) -> Any:
        if value.ndim == 1:
            return value.tolist()
        return {"content": value[0].ravel().tolist(), "shape": list(value.shape[1:])}

    return {"data": [{name: entry(value) for name, value in row.items()} for row in rows]}


def parse_csv(text: str) -> list[dict[str, Any]]:
    """perf_analyzer -f CSV (microseconds) -> point fields (milliseconds)."""
    points = []
    for rec in csv.DictReader(io.StringIO(text)):
        if not rec.get("Concurrency"):
            continue
        us = {k: float(v) for k, v in rec.items() if k and v and k != "Concurrency"}
        nan = float("nan")
        points.append({
            "concurrency": int(rec["Concurrency"]),
            "inferences_per_s": round(us["Inferences/Second"], 1),
            **{f"p{q}_ms": us.get(f"p{q} latency", nan) / 1e3 for q in (50, 90, 95, 99)},
            "server_queue_us": us.get("Server Queue"),
            "server_compute_infer_us": us.get("Server Compute Infer"),
        })  # fmt: skip
    return points


def served_version(address: str, model: str) -> str:
    """The highest version the server lists (perf_analyzer needs -x)."""
    import grpc

    from protos import grpc_service_pb2 as pb
    from protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        meta = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=model), timeout=10
        )
    numeric = [int(v) for v in meta.versions if v.isdigit()]
    return str(max(numeric)) if numeric else ""


def measure(tool: Tool, address: str, info: ModelInfo, rows: list[Row], concurrency: int,
            window_ms: int = 3000, streaming: bool = False) -> dict[str, Any]:  # fmt: skip
    """One perf_analyzer point (`--async`, batch 1, the same request pool as bench's);
    {"error": ...} when it fails. A point that cannot get stable windows on a busy
    machine is rerun once at --stability-percentage 100 (`stability_pct` says so)."""
    version = served_version(address, info.name)
    with tempfile.TemporaryDirectory(prefix="nnserve-pa-") as tmp:
        data, out_csv = Path(tmp) / "input.json", Path(tmp) / "out.csv"
        data.write_text(json.dumps(input_data(rows)))
        cmd = [str(tool.binary), "-m", info.name, "-u", address, "-p", str(window_ms), "-i",
               "grpc", "-b", "1", "--async", "--max-trials", "6", "--input-data", str(data),
               "--concurrency-range", f"{concurrency}:{concurrency}", "-f", str(out_csv),
               *(["-x", version] if version else []),
               *(["--streaming"] if streaming else [])]  # fmt: skip
        for t in info.inputs:  # inputs with variable dims need their shape spelled out
            if -1 in t.shape[1:]:
                cmd += ["--shape", f"{t.name}:{','.join(map(str, rows[0][t.name].shape[1:]))}"]
        for stability in (STABILITY_PCT, 100):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            try:
                flags = ["--stability-percentage", str(stability)]
                limit = window_ms / 1000 * 12 + 60
                done = subprocess.run([*cmd, *flags], env=tool.env(), capture_output=True,
                                      text=True, timeout=limit)  # fmt: skip
                code, output = done.returncode, (done.stdout + done.stderr).strip()
            except subprocess.TimeoutExpired as exc:  # e.g. the server died mid-run
                code, output = -1, f"timed out after {exc.timeout:.0f} s"
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            if code == 0 or "stable measurement" not in output:
                break
            log.info("perf_analyzer %s c=%d not stable within %d%%: retrying at 100%%",
                     info.name, concurrency, stability)  # fmt: skip
        if code != 0 or not out_csv.exists():
            tail = " | ".join(output.splitlines()[-4:])
            hint = f" ({EMPTY_SHAPE_HINT})" if "unable to set shape" in tail else ""
            return {"error": f"exit {code}: {tail}{hint}"}
        (point,) = parse_csv(out_csv.read_text())
    # perf_analyzer's own CPU over its whole run (all windows, warm-up included)
    point["client_cores"] = round(cpu / max(1e-9, time.monotonic() - started), 3)
    return {"model": info.name, **point, "stability_pct": stability}


def main() -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        tool = ensure()
    except PerfAnalyzerUnavailable as exc:
        print(f"perf_analyzer unavailable: {exc}")
        return 1
    libs = ":".join(map(str, tool.lib_dirs))
    print(f"perf_analyzer: {tool.binary} ({tool.version()}); LD_LIBRARY_PATH={libs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
