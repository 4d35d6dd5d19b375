"""Triton's perf_analyzer against the nnserve KServe v2 endpoint, numbers kept apart.

There is no usable PyPI package (`perf-analyzer` is an empty placeholder), so the C++
binary is taken from the tritonclient 2.41.1 manylinux wheel (`*.data/data/bin/`) into
bench/.cache/perf_analyzer/. It links two libraries the machine may lack:
  - libb64.so.0d: Debian's libb64-0d. Installed with apt-get when running as root;
    otherwise `apt-get download` + `dpkg-deb -x` into the cache (no root needed).
  - libcudart.so.12: only loaded, never used without a GPU; taken from the PyPI wheel
    nvidia-cuda-runtime-cu12 into the cache.
The binary then runs with LD_LIBRARY_PATH pointing into the cache.

    python -m bench.perf_analyzer                                  # fetch, check, print paths
    python -m bench.perf_analyzer --address 127.0.0.1:50051 --models mlp --concurrency 1,8

perf_analyzer is a different client (C++, its own request pacing and windows), so its
numbers are compared only with each other, never with `python -m bench` points.
"""

from __future__ import annotations

import argparse
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

log = logging.getLogger("bench")

CACHE = Path(__file__).resolve().parent / ".cache" / "perf_analyzer"
TRITONCLIENT = "tritonclient==2.41.1"
WHEEL_PLATFORM = "manylinux1_x86_64"  # tritonclient-2.41.1-py3-none-manylinux1_x86_64.whl
BINARY_IN_WHEEL = "tritonclient-2.41.1.data/data/bin/perf_analyzer"
CUDART = "nvidia-cuda-runtime-cu12>=12,<13"
CUDART_PLATFORM = "manylinux2014_x86_64"
CUDART_IN_WHEEL = "nvidia/cuda_runtime/lib/libcudart.so.12"
LIBB64_PACKAGE = "libb64-0d"
LIBB64 = "libb64.so.0d"
STABILITY_PCT = 25  # perf_analyzer's default is 10; 25 is reachable on a shared 2-core box


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot be fetched or run here; the message says exactly why."""


@dataclass(frozen=True)
class Tool:
    binary: Path
    lib_dirs: tuple[Path, ...]

    def env(self) -> dict[str, str]:
        paths = [str(p) for p in self.lib_dirs] + [os.environ.get("LD_LIBRARY_PATH", "")]
        return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in paths if p)}

    def version(self) -> str:
        out = subprocess.run(
            [str(self.binary), "--version"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        return (
            (out.stdout or out.stderr).strip().splitlines()[-1]
            if (out.stdout or out.stderr)
            else ""
        )


def _run(cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    log.info("perf_analyzer setup: %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerUnavailable(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PerfAnalyzerUnavailable(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")
    return done


def _pip_download(requirement: str, platform: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("=")[0].split(">")[0].split("<")[0].replace("-", "_").lower()
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name))
    if found:
        return found[-1]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            platform,
            "--python-version",
            "3",
            "--implementation",
            "py",
            "-d",
            str(dest),
            requirement,
        ],
        f"pip download {requirement}",
    )
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name))
    if not found:
        raise PerfAnalyzerUnavailable(f"pip download {requirement} left no wheel in {dest}")
    return found[-1]


def _extract(wheel: Path, member: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            with zf.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except KeyError:
            raise PerfAnalyzerUnavailable(f"{wheel.name} has no {member}") from None
    return target


def _system_has(library: str) -> bool:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return library in out


def _libb64(cache: Path) -> Path | None:
    """A directory holding libb64.so.0d, or None when the system already has it."""
    local = cache / "libb64" / "usr" / "lib" / "x86_64-linux-gnu"
    if (local / LIBB64).exists():
        return local
    if _system_has(LIBB64):
        return None
    if shutil.which("apt-get") is None:
        raise PerfAnalyzerUnavailable(
            f"{LIBB64} is missing and there is no apt-get to install {LIBB64_PACKAGE} "
            "(perf_analyzer links it; install it with the system's package manager)"
        )
    if os.geteuid() == 0:
        _run(
            ["apt-get", "install", "-y", "--no-install-recommends", LIBB64_PACKAGE],
            f"apt-get install {LIBB64_PACKAGE}",
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if _system_has(LIBB64):
            return None
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", LIBB64_PACKAGE], f"apt-get download {LIBB64_PACKAGE}", cwd=debs)
    deb = next(iter(sorted(debs.glob(f"{LIBB64_PACKAGE}_*.deb"))), None)
    if deb is None:
        raise PerfAnalyzerUnavailable(f"apt-get download {LIBB64_PACKAGE} produced no .deb")
    _run(["dpkg-deb", "-x", str(deb), str(cache / "libb64")], f"dpkg-deb -x {deb.name}")
    if not (local / LIBB64).exists():
        raise PerfAnalyzerUnavailable(f"{deb.name} did not contain {LIBB64}")
    return local


def ensure(cache: Path = CACHE) -> Tool:
    """Fetch (once) and check the binary and its libraries; PerfAnalyzerUnavailable if not."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise PerfAnalyzerUnavailable(
            "the perf_analyzer in the tritonclient wheel is linux x86_64 only"
        )
    binary = cache / "bin" / "perf_analyzer"
    if not binary.exists():
        wheel = _pip_download(TRITONCLIENT, WHEEL_PLATFORM, cache / "wheels")
        _extract(wheel, BINARY_IN_WHEEL, binary)
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    lib = cache / "lib"
    if not (lib / "libcudart.so.12").exists():
        wheel = _pip_download(CUDART, CUDART_PLATFORM, cache / "wheels")
        _extract(wheel, CUDART_IN_WHEEL, lib / "libcudart.so.12")
    dirs = [lib]
    b64 = _libb64(cache)
    if b64 is not None:
        dirs.append(b64)
    tool = Tool(binary, tuple(dirs))
    ldd = subprocess.run(
        ["ldd", str(binary)], env=tool.env(), capture_output=True, text=True, timeout=30
    )
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        raise PerfAnalyzerUnavailable(f"perf_analyzer still lacks {', '.join(missing)} (ldd)")
    return tool


# ---------------------------------------------------------------------- running


def input_data(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """perf_analyzer --input-data JSON: our request pool, shapes without the batch axis.

    A batch-only input (e.g. `lengths`, shape [B]) goes as a plain list, so perf_analyzer
    takes its per-request shape from the server's metadata."""

    def entry(value: Any) -> Any:
        if value.ndim == 1:
            return value.tolist()
        return {"content": value[0].ravel().tolist(), "shape": list(value.shape[1:])}

    return {"data": [{name: entry(value) for name, value in row.items()} for row in rows]}


# perf_analyzer (2.41, model_parser.cc) takes per-request shapes from ModelMetadata minus
# the batch axis; an input declared [-1] leaves an empty shape, which it refuses.
EMPTY_SHAPE_HINT = (
    "perf_analyzer needs at least one non-batch dimension per input; the server reports "
    "a batch-only input (shape [-1]) as an empty per-request shape. Triton reports such "
    "inputs as dims [1] with reshape [] (metadata [-1, 1]) and accepts [B, 1]"
)


def parse_csv(text: str) -> list[dict[str, Any]]:
    """perf_analyzer -f CSV (microseconds) -> our point fields (milliseconds)."""
    points = []
    for rec in csv.DictReader(io.StringIO(text)):
        if not rec.get("Concurrency"):
            continue
        us = {
            k: float(v) for k, v in rec.items() if k and v not in (None, "") and k != "Concurrency"
        }
        points.append(
            {
                "concurrency": int(rec["Concurrency"]),
                "inferences_per_s": round(us["Inferences/Second"], 1),
                "p50_ms": us.get("p50 latency", float("nan")) / 1e3,
                "p90_ms": us.get("p90 latency", float("nan")) / 1e3,
                "p95_ms": us.get("p95 latency", float("nan")) / 1e3,
                "p99_ms": us.get("p99 latency", float("nan")) / 1e3,
                "client_send_us": us.get("Client Send"),
                "network_server_us": us.get("Network+Server Send/Recv"),
                "server_queue_us": us.get("Server Queue"),
                "server_compute_infer_us": us.get("Server Compute Infer"),
                "client_recv_us": us.get("Client Recv"),
            }
        )
    return points


def served_version(address: str, model: str) -> str:
    """The highest version the server lists (perf_analyzer needs -x, see docs/benchmarks.md)."""
    import grpc

    from protos import grpc_service_pb2 as pb
    from protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        meta = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=model), timeout=10
        )
    numeric = [int(v) for v in meta.versions if v.isdigit()]
    return str(max(numeric)) if numeric else ""


def run_model(
    tool: Tool,
    address: str,
    model: str,
    concurrency: list[int],
    rows: list[dict[str, Any]] | None,
    window_ms: int = 3000,
    dynamic: tuple[str, ...] = (),
    extra: list[str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Run perf_analyzer once per concurrency value; returns points and the command line."""
    version = served_version(address, model)
    points: list[dict[str, Any]] = []
    cmdline = ""
    with tempfile.TemporaryDirectory(prefix="nnserve-pa-") as tmp:
        base = [
            str(tool.binary),
            "-m",
            model,
            "-i",
            "grpc",
            "-u",
            address,
            "-b",
            "1",
            "--async",
            "-p",
            str(window_ms),
            "--max-trials",
            "6",
        ]
        if version:
            base += ["-x", version]
        if rows:
            data = Path(tmp) / "input.json"
            data.write_text(json.dumps(input_data(rows)))
            base += ["--input-data", str(data)]
            for name in dynamic:  # inputs with variable dims need their shape spelled out
                dims = rows[0][name].shape[1:]
                base += ["--shape", f"{name}:{','.join(str(d) for d in dims)}"]
        base += extra or []
        for conc in concurrency:
            log.info("perf_analyzer %s c=%d", model, conc)
            stability = STABILITY_PCT
            while True:
                out_csv = Path(tmp) / f"c{conc}.csv"
                out_csv.unlink(missing_ok=True)
                cmd = [*base, "--stability-percentage", str(stability),
                       "--concurrency-range", f"{conc}:{conc}", "-f", str(out_csv)]  # fmt: skip
                cmdline = " ".join(Path(c).name if c.startswith(tmp) else c for c in cmd)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.monotonic()
                try:
                    done = subprocess.run(
                        cmd, env=tool.env(), capture_output=True, text=True,
                        timeout=window_ms / 1000 * 12 + 60,
                    )  # fmt: skip
                except subprocess.TimeoutExpired as exc:  # e.g. the server died mid-run
                    out = (
                        exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
                    )
                    done = subprocess.CompletedProcess(
                        cmd, -1, out, f"timed out after {exc.timeout:.0f} s"
                    )
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                client_cores = cpu / max(1e-9, time.monotonic() - started)
                output = (done.stdout + done.stderr).strip()
                if done.returncode == 0 or stability >= 100 or "stable measurement" not in output:
                    break
                # A busy machine: accept whatever its last windows say, and mark the point.
                log.info("perf_analyzer %s c=%d not stable within %d%%: retrying at 100%%",
                         model, conc, stability)  # fmt: skip
                stability = 100
            if done.returncode != 0 or not out_csv.exists():
                tail = " | ".join(output.splitlines()[-4:])
                if "unable to set shape for the input" in tail:
                    tail += f" ({EMPTY_SHAPE_HINT})"
                    points.extend(
                        {
                            "model": model,
                            "concurrency": c,
                            "error": f"exit {done.returncode}: {tail}",
                        }
                        for c in concurrency[concurrency.index(conc) :]
                    )  # the same at every concurrency: do not try the rest
                    break
                points.append(
                    {
                        "model": model,
                        "concurrency": conc,
                        "error": f"exit {done.returncode}: {tail}",
                    }
                )
                continue
            for p in parse_csv(out_csv.read_text()):
                # perf_analyzer's own CPU over its whole run (all windows, warm-up included)
                p["client_cores"] = round(client_cores, 3)
                points.append({"model": model, **p, "stability_pct": stability})
    return points, cmdline


def run_all(
    infos: dict[str, Any],
    addresses: dict[str, str],
    concurrency: list[int],
    rows: dict[str, list[dict[str, Any]]],
    window_ms: int,
) -> dict[str, Any]:
    """perf_analyzer for every model; a result block that says why when it cannot run."""
    try:
        tool = ensure()
    except PerfAnalyzerUnavailable as exc:
        log.warning("perf_analyzer unavailable: %s", exc)
        return {"status": f"unavailable: {exc}", "points": []}
    result: dict[str, Any] = {
        "status": "ok",
        "version": tool.version(),
        "points": [],
        "commands": {},
    }
    for model in infos:
        info = infos[model]
        dynamic = tuple(t.name for t in info.inputs if -1 in t.shape[1:]) if info else ()
        points, cmd = run_model(
            tool, addresses[model], model, concurrency, rows.get(model), window_ms, dynamic
        )
        result["commands"][model] = cmd
        for p in points:
            if "error" in p:
                log.warning("perf_analyzer %s c=%d failed: %s", model, p["concurrency"], p["error"])
                result["status"] = "some points failed"
                result.setdefault("errors", []).append(p)
            else:
                log.info(
                    "perf_analyzer %-11s c=%-3d %8.0f inf/s  p50 %.3f  p99 %.3f ms",
                    model,
                    p["concurrency"],
                    p["inferences_per_s"],
                    p["p50_ms"],
                    p["p99_ms"],
                )
                result["points"].append(p)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf_analyzer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--address", help="KServe v2 endpoint; without it: fetch and check only")
    p.add_argument("--models", default="mlp")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository: inputs from model.json (needed for sequence models)",
    )
    p.add_argument("--seq-len", type=int, default=32)
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        tool = ensure()
    except PerfAnalyzerUnavailable as exc:
        print(f"perf_analyzer unavailable: {exc}")
        return 1
    libs = ":".join(map(str, tool.lib_dirs))
    print(f"perf_analyzer: {tool.binary} ({tool.version()}); LD_LIBRARY_PATH={libs}")
    if not args.address:
        return 0
    models = [m for m in args.models.split(",") if m]
    conc = [int(c) for c in args.concurrency.split(",")]
    infos: dict[str, Any] = {m: None for m in models}
    rows: dict[str, list[dict[str, Any]]] = {}
    if args.repository is not None:
        from bench.workload import from_repository, sample_rows

        infos = {m: from_repository(args.repository, m) for m in models}
        rows = {m: sample_rows(i, 16, args.seq_len) for m, i in infos.items()}
    result = run_all(infos, {m: args.address for m in models}, conc, rows, args.window_ms)
    for point in result["points"]:
        print(json.dumps(point))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
