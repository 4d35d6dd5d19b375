"""One peers run: every server up at once, then rounds that alternate between them.

Per round and concurrency, each server in turn gets one closed-loop point from bench's
own load generator (KServe v2 ModelInfer, batch 1); then, per concurrency, each server
gets one perf_analyzer point. The servers' CPU is read from /proc around each point.
The reported figure per (client, server, model, concurrency) is the median over rounds.

With two or more CPUs the client side (this process, the load generator, perf_analyzer)
is pinned to one set of CPUs and every server thread to another, so a server cannot
borrow the client's core and server CPU per request is not inflated by contention.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from bench import perf_analyzer, procstat
from bench.loadgen import LoadGenerator
from bench.peers import LABELS, SERVERS, configs, envs
from bench.peers.envs import PeerUnavailable
from bench.peers.servers import (
    Running,
    start_mlserver,
    start_nnserve,
    start_noop,
    start_triton,
)
from bench.runner import code_version, machine_context
from bench.workload import (
    ModelInfo,
    build_workload,
    check_response,
    from_repository,
    sample_rows,
)

log = logging.getLogger("bench")

PEERS = ("mlserver", "triton")  # installed into their own environments
# perf_analyzer errors that hold for every point of a server (not worth retrying).
PA_CANNOT_DRIVE = ("failed to get model config", "failed to get model metadata")


@dataclass
class PeerOptions:
    repository: Path = Path("model_repository")
    models: list[str] = field(default_factory=lambda: ["mlp"])
    servers: list[str] = field(default_factory=lambda: list(SERVERS))
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    rounds: int = 3
    duration_s: float = 5.0
    warmup_s: float = 1.0
    perf_analyzer: bool = True
    perf_analyzer_window_ms: int = 2000
    pin: bool = True
    out: Path = Path("bench/results")
    plots: bool = True
    timeout_s: float = 30.0
    # Triton's and MLServer's batchers wait this long for a batch to fill even when idle;
    # None: nnserve's max_queue_delay_ms from model.json.
    peer_queue_delay_ms: float | None = 0.0
    # Also measure over ModelStreamInfer: this many requests in flight per stream
    # (clients bench-stream and perf_analyzer --streaming); 0: unary only.
    stream_window: int = 4


# ---------------------------------------------------------------------- pinning


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(client CPUs, server CPUs): the first allowed CPU for the client side, the rest for
    the servers; None with fewer than two CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    return {allowed[0]}, set(allowed[1:])


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of these processes onto `cpus` (threads made later inherit it)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, cpus)


# ---------------------------------------------------------------------- measuring


def _window(
    server_pids: list[int], client_pids: list[int]
) -> tuple[Callable[[], None], Callable[[], None], dict[str, float]]:
    """Callbacks for the edges of the measured window: wall time and CPU seconds of the
    server, the client and the whole machine."""
    reading: dict[str, float] = {}

    def read(suffix: str) -> None:
        reading["t" + suffix] = time.monotonic()
        reading["server" + suffix] = procstat.cpu_seconds(server_pids)
        reading["client" + suffix] = procstat.cpu_seconds(client_pids)
        reading["machine" + suffix] = procstat.machine_cpu_seconds()[0]

    return lambda: read("0"), lambda: read("1"), reading


def loadgen_point(
    gen: LoadGenerator, server: Running, payloads: tuple[bytes, ...], method: str,
    concurrency: int, opts: PeerOptions, streams: int = 0,
) -> dict[str, Any]:  # fmt: skip
    start, stop, r = _window(server.pids(), gen.pids())
    try:
        result = gen.run(
            server.address, method, payloads, concurrency, warmup_s=opts.warmup_s,
            duration_s=opts.duration_s, timeout_s=opts.timeout_s, check=check_response,
            at_start=start, at_end=stop, streams=streams,
        )  # fmt: skip
    except RuntimeError as exc:  # e.g. a server without ModelStreamInfer
        return {"error": str(exc)[:400]}
    summary = result.summary(1)
    wall = r["t1"] - r["t0"]
    server_cpu = r["server1"] - r["server0"]
    client_cpu = r["client1"] - r["client0"]
    machine = r["machine1"] - r["machine0"]
    return {
        "inferences_per_s": summary["inferences_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "requests": summary["requests"],
        "error_count": summary["error_count"],
        "errors": summary["errors"],
        "error_example": summary["error_example"],
        "response_check": summary["response_check"],
        "server_cores": round(server_cpu / wall, 3),
        "server_us_per_request": round(server_cpu * 1e6 / result.requests, 1)
        if result.requests
        else None,
        "client_cores": round(client_cpu / wall, 3),
        "other_cores": round(max(0.0, machine - server_cpu - client_cpu) / wall, 3),
        "loadavg": procstat.loadavg()[0],
    }


def pa_point(
    tool: perf_analyzer.Tool, server: Running, info: ModelInfo, rows: list[Any],
    concurrency: int, opts: PeerOptions, streaming: bool = False,
) -> dict[str, Any]:  # fmt: skip
    pids = server.pids()
    t0, cpu0 = time.monotonic(), procstat.cpu_seconds(pids)
    dynamic = tuple(t.name for t in info.inputs if -1 in t.shape[1:])
    try:
        points, _ = perf_analyzer.run_model(
            tool, server.address, info.name, [concurrency], rows, opts.perf_analyzer_window_ms,
            dynamic, ["--streaming"] if streaming else None,
        )  # fmt: skip
    except grpc.RpcError as exc:  # the server went away (its log is kept)
        return {"error": f"{exc.code().name}: {exc.details()}"[:400]}  # type: ignore[attr-defined]
    wall = time.monotonic() - t0
    cores = (procstat.cpu_seconds(pids) - cpu0) / wall
    p: dict[str, Any] = points[0] if points else {"error": "no output"}
    if "error" in p:
        return {"error": str(p["error"])[:400]}
    ips = p["inferences_per_s"]
    return {
        "inferences_per_s": ips,
        "p50_ms": round(p["p50_ms"], 3),
        "p99_ms": round(p["p99_ms"], 3),
        "server_cores": round(cores, 3),
        # Over perf_analyzer's whole run (its warm-up and unstable windows too), so only
        # an estimate: server cores / the throughput of its stable windows.
        "server_us_per_request": round(cores * 1e6 / ips, 1) if ips else None,
        "client_cores": p.get("client_cores"),
        "stability_pct": p.get("stability_pct"),
        "loadavg": procstat.loadavg()[0],
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per numeric field over the rounds that produced a result; errors summed."""
    ok = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {"rounds": len(ok)}
    if not ok:
        out["error"] = rounds[0]["error"] if rounds else "not measured"
        return out
    for key in ("inferences_per_s", "p50_ms", "p99_ms", "server_cores", "server_us_per_request",
                "client_cores", "other_cores", "loadavg"):  # fmt: skip
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            out[key] = round(statistics.median(values), 3)
    ips = [r["inferences_per_s"] for r in ok]
    out["inferences_per_s_range"] = [min(ips), max(ips)]
    out["error_count"] = sum(r.get("error_count", 0) for r in ok)
    checks = {r.get("response_check", "ok") for r in ok} - {"ok"}
    if checks:
        out["response_check"] = sorted(checks)[0]
    return out


# ---------------------------------------------------------------------- the run


def _start_all(opts: PeerOptions, infos: dict[str, ModelInfo], work: Path,
               status: dict[str, str]) -> dict[str, dict[str, Running]]:  # fmt: skip
    """server name -> model -> running server; a peer that cannot run is marked in
    `status` with the reason and left out."""
    started: dict[str, dict[str, Running]] = {}
    for name in opts.servers:
        t0 = time.monotonic()
        try:
            if name == "noop":
                started[name] = {m: start_noop(opts.repository, i, work) for m, i in infos.items()}
            elif name == "nnserve":
                by_task: dict[str, list[ModelInfo]] = {}
                for info in infos.values():
                    by_task.setdefault(info.task, []).append(info)
                started[name] = {}
                for task, group in by_task.items():
                    server = start_nnserve(opts.repository, group, work, task)
                    started[name].update({i.name: server for i in group})
            else:
                env = envs.ensure(envs.ENVS[name])
                start = start_mlserver if name == "mlserver" else start_triton
                server = start(env, list(infos.values()), work, opts.peer_queue_delay_ms)
                started[name] = {m: server for m in infos}
        except PeerUnavailable as exc:
            log.error("%s unavailable: %s", name, exc)
            status[name] = f"unavailable: {exc}"
            continue
        status[name] = "ok"
        log.info("%s ready in %.1f s on %s", LABELS[name], time.monotonic() - t0,
                 ", ".join(sorted({s.address for s in started[name].values()})))  # fmt: skip
    return started


def run(opts: PeerOptions) -> dict[str, Any]:
    started_at = dt.datetime.now(dt.UTC)
    stamp = "peers-" + started_at.strftime("%Y%m%dT%H%M%SZ")
    if not opts.repository.is_dir():
        raise SystemExit(f"model repository {opts.repository} not found: run `make models`")
    infos = {m: from_repository(opts.repository, m) for m in opts.models}
    rows = {m: sample_rows(i, 16) for m, i in infos.items()}
    workloads = {
        (s, m): build_workload(i, "v2", rows[m]) for m, i in infos.items() for s in SERVERS
    }
    for m, i in infos.items():  # Triton takes batch-only inputs as [B, 1]
        workloads[("triton", m)] = build_workload(i, "v2", configs.triton_rows(i, rows[m]))
    split = cpu_split() if opts.pin else None
    doc: dict[str, Any] = {
        "schema": 1,
        "kind": "peers",
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": {**machine_context(), **code_version()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "pinning": {"client_cpus": sorted(split[0]), "server_cpus": sorted(split[1])}
        if split
        else None,
        "status": {},
        "crashes": [],  # servers that died during the run (restarted)
        "rounds": [],
    }
    if split:
        # This process first: the load processes and perf_analyzer inherit its CPUs.
        pin([os.getpid()], split[0])
    tool: perf_analyzer.Tool | None = None
    if opts.perf_analyzer:
        try:
            tool = perf_analyzer.ensure()
            doc["perf_analyzer_version"] = tool.version()
        except perf_analyzer.PerfAnalyzerUnavailable as exc:
            log.warning("perf_analyzer unavailable: %s", exc)
            doc["perf_analyzer_status"] = f"unavailable: {exc}"
    work = Path(tempfile.mkdtemp(prefix="nnserve-peers-"))
    gen = LoadGenerator(1)
    started: dict[str, dict[str, Running]] = {}
    raw: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    pa_cannot: dict[str, str] = doc.setdefault("perf_analyzer_cannot_drive", {})
    try:
        started = _start_all(opts, infos, work, doc["status"])
        servers = [s for s in opts.servers if s in started]

        def server_pids() -> list[int]:
            return [p for by in started.values() for s in set(by.values()) for p in s.pids()]

        def alive(name: str) -> bool:
            """Restart a server that died since its last point, recording the crash and
            keeping its log (Triton 2.51 crashed under ModelStreamInfer load here)."""
            if name not in started:
                return False
            servers_of = set(started[name].values())
            dead = [s for s in servers_of if s.process.poll() is not None]
            if not dead:
                return True
            for s in dead:
                kept = s.log_path.with_suffix(f".crash{len(doc['crashes']) + 1}.log")
                s.log_path.rename(kept)
                s.log_path = kept
                tail = s.log_tail(12)
                signal_line = next(
                    (line for line in kept.read_text(errors="replace").splitlines()
                     if line.startswith("Signal")), "",
                )  # fmt: skip
                log.error("%s exited with code %s; restarting it. Log tail:\n%s",
                          name, s.process.returncode, tail)  # fmt: skip
                doc["crashes"].append({"server": name, "exit_code": s.process.returncode,
                                       "log": str(kept), "log_tail": tail,
                                       "signal": signal_line})  # fmt: skip
            for s in servers_of:
                s.stop()
            fresh = _start_all(replace(opts, servers=[name]), infos, work, doc["status"])
            if name not in fresh:
                del started[name]
                return False
            started[name] = fresh[name]
            if split:
                pin(server_pids(), split[1])
            return True

        window = opts.stream_window
        bench_clients: list[tuple[str, Callable[[int], int]]] = [("bench", lambda c: 0)]
        pa_clients = [("perf_analyzer", False)]
        if window:
            bench_clients.append(("bench-stream", lambda c: -(-c // window)))
            pa_clients.append(("perf_analyzer-stream", True))
        for rnd in range(1, opts.rounds + 1):
            if split:  # again each round: MLServer may have restarted a worker
                pin(server_pids(), split[1])
            log.info("round %d/%d (load average %.2f)", rnd, opts.rounds, procstat.loadavg()[0])
            for model, info in infos.items():
                for conc in opts.concurrency:
                    for name in servers:
                        if not alive(name):
                            continue
                        wl = workloads[(name, model)]
                        for client, streams in bench_clients:
                            p = loadgen_point(gen, started[name][model], wl.payloads, wl.method,
                                              conc, opts, streams(conc))  # fmt: skip
                            raw.setdefault((client, name, model, conc), []).append(p)
                            _log_point(rnd, client, name, model, conc, p)
                if tool is None:
                    continue
                for conc in opts.concurrency:
                    for name in servers:
                        if name in pa_cannot or not alive(name):
                            continue
                        for client, streaming in pa_clients:
                            p = pa_point(tool, started[name][model], info, rows[model], conc,
                                         opts, streaming)  # fmt: skip
                            if any(s in p.get("error", "") for s in PA_CANNOT_DRIVE):
                                log.warning("perf_analyzer cannot drive %s: %s", name, p["error"])
                                pa_cannot[name] = p["error"]
                                break
                            raw.setdefault((client, name, model, conc), []).append(p)
                            _log_point(rnd, client, name, model, conc, p)
    finally:
        gen.close()
        for by in started.values():
            for server in set(by.values()):
                server.stop()
        failed = any("error" in p for rounds in raw.values() for p in rounds)
        if all(v == "ok" for v in doc["status"].values()) and not failed:
            shutil.rmtree(work, ignore_errors=True)  # server logs stay when one failed
        else:
            log.info("server logs kept in %s", work)
    doc["points"] = [
        {"client": c, "server": s, "model": m, "concurrency": k, **median_of(v), "per_round": v}
        for (c, s, m, k), v in raw.items()
    ]
    doc["machine"]["loadavg_end"] = procstat.loadavg()
    doc["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    from bench.peers import report

    doc["files"] = [str(report.write_json(doc, opts.out, stamp))]
    if opts.plots:
        try:
            doc["files"] += [str(p) for p in report.plot(doc, opts.out, stamp)]
        except ImportError as exc:  # matplotlib lives in the `train` extra
            log.warning("no plots: %s", exc)
    return doc


def _log_point(rnd: int, client: str, name: str, model: str, conc: int, p: dict[str, Any]) -> None:
    if "error" in p:
        log.warning("r%d %-13s %-8s %s c=%-3d failed: %s", rnd, client, name, model, conc,
                    p["error"])  # fmt: skip
        return
    log.info(
        "r%d %-13s %-8s %s c=%-3d %7.0f inf/s  p50 %6.3f  p99 %6.3f ms  srv %.2f cores "
        "%s us/req%s",
        rnd, client, name, model, conc, p["inferences_per_s"], p["p50_ms"], p["p99_ms"],
        p["server_cores"], p["server_us_per_request"],
        f"  errors {p['error_count']}" if p.get("error_count") else "",
    )  # fmt: skip
