"""One peers run: every server up at once, then rounds that alternate between them.

Per round, model and concurrency, each server in turn gets one closed-loop point from
bench's load generator, unary and over streams; then each gets perf_analyzer points,
unary and --streaming. Reported per (client, server, model, concurrency): the median
over rounds. With two or more CPUs the client side (this process, the load processes and
perf_analyzer, which inherit its CPUs) is pinned to the first CPU and every server
thread to the others, again each round, so that no server borrows the client's core.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import harness, perf_analyzer, report
from bench.harness import Server, ServerError, measure_point, start_noop, start_service, wait_ready
from bench.loadgen import LoadGenerator
from bench.peers import LABELS, SERVERS, configs
from bench.peers.servers import PeerUnavailable, start_mlserver, start_triton
from bench.workload import ModelInfo, build_workload, from_repository, sample_rows

log = logging.getLogger("bench")

# Servers that cannot serve a client at all, and why (a cell `n/a`, not `failed`).
UNARY_ONLY = {"noop-native": "NativeGrpcFront has no bidirectional streams (ModelStreamInfer)"}
# perf_analyzer errors that hold for every point of a server (not worth retrying).
PA_CANNOT_DRIVE = ("failed to get model config", "failed to get model metadata")


@dataclass
class PeerOptions:
    repository: Path = Path("model_repository")
    models: list[str] = field(default_factory=lambda: ["mlp"])
    servers: list[str] = field(default_factory=lambda: list(SERVERS))
    concurrency: list[int] = field(default_factory=lambda: [1, 32, 128])
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
    # Requests in flight per ModelStreamInfer stream for the streaming clients; 0: unary only.
    stream_window: int = 4


def start_server(name: str, opts: PeerOptions, infos: dict[str, ModelInfo],
                 work: Path) -> dict[str, Server]:  # fmt: skip
    """model -> the server of `name` that serves it (one server may serve several)."""
    native = name.endswith("-native")
    if name.startswith("noop"):
        front = "native" if native else "aio"
        started = {m: start_noop(opts.repository, m, work, front) for m in infos}
    elif name.startswith("nnserve"):
        by_task: dict[str, list[str]] = {}
        for info in infos.values():
            by_task.setdefault(info.task, []).append(info.name)
        started = {}
        for task, models in by_task.items():
            server = start_service(task, opts.repository, work, models, label=f"{name}-{task}",
                                   frontend="native" if native else "aio")  # fmt: skip
            started.update(dict.fromkeys(models, server))
    else:
        start = start_mlserver if name == "mlserver" else start_triton
        return dict.fromkeys(infos, start(list(infos.values()), work, opts.peer_queue_delay_ms))
    try:
        for server in set(started.values()):
            wait_ready(server)
    except BaseException:
        for server in set(started.values()):
            server.stop()
        raise
    return started


class PeersRun:
    """Servers up, rounds of points, the document: one run of `python -m bench.peers`."""

    def __init__(self, opts: PeerOptions) -> None:
        if not opts.repository.is_dir():
            raise SystemExit(f"model repository {opts.repository} not found: run `make models`")
        self.opts = opts
        self.infos = {m: from_repository(opts.repository, m) for m in opts.models}
        self.rows = {m: sample_rows(i, 16) for m, i in self.infos.items()}
        self.split = harness.cpu_split() if opts.pin else None
        pinning = self.split and {"client_cpus": sorted(self.split[0]),
                                  "server_cpus": sorted(self.split[1])}  # fmt: skip
        self.doc: dict[str, Any] = {
            "schema": 2, "kind": "peers", "started_at": _now(),
            "machine": harness.machine_context(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "pinning": pinning or None, "status": {}, "crashes": [], "points": [],
            "not_applicable": {name: dict.fromkeys(("bench-stream", "perf_analyzer-stream"), why)
                               for name, why in UNARY_ONLY.items() if name in opts.servers},
        }  # fmt: skip
        self.work = Path(tempfile.mkdtemp(prefix="nnserve-peers-"))
        self.started: dict[str, dict[str, Server]] = {}
        self.raw: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
        self.tool: perf_analyzer.Tool | None = None

    def bring_up(self, name: str) -> bool:
        t0 = time.monotonic()
        try:
            self.started[name] = start_server(name, self.opts, self.infos, self.work)
        except (PeerUnavailable, ServerError) as exc:
            log.error("%s unavailable: %s", LABELS[name], exc)
            self.doc["status"][name] = f"unavailable: {exc}"
            return False
        self.doc["status"][name] = "ok"
        if name.startswith("nnserve"):  # what the service runs, not only what was asked
            server = next(iter(self.started[name].values()))
            self.doc.setdefault("front_ends", {})[name] = harness.front_end(server)
        log.info("%s ready in %.1f s", LABELS[name], time.monotonic() - t0)
        return True

    def pin_servers(self) -> None:
        if self.split:
            pids = [p for by in self.started.values() for s in set(by.values()) for p in s.pids()]
            harness.pin(pids, self.split[1])

    def alive(self, name: str) -> bool:
        """Restart a server that died since its last point, recording the crash and
        keeping its log (Triton 2.51 crashed under ModelStreamInfer load here)."""
        if name not in self.started:
            return False
        servers = set(self.started[name].values())
        if all(s.process.poll() is None for s in servers):
            return True
        for s in (s for s in servers if s.process.poll() is not None):
            kept = s.log_path.with_suffix(f".crash{len(self.doc['crashes']) + 1}.log")
            s.log_path.rename(kept)
            lines = kept.read_text(errors="replace").splitlines()
            log.error("%s exited with code %s; restarting it", name, s.process.returncode)
            self.doc["crashes"].append({
                "server": name, "exit_code": s.process.returncode, "log": str(kept),
                "log_tail": "\n".join(lines[-12:]),
                "signal": next((ln for ln in lines if ln.startswith("Signal")), ""),
            })  # fmt: skip
        for s in servers:
            s.stop()
        del self.started[name]
        if self.bring_up(name):
            self.pin_servers()
        return name in self.started

    def point(
        self, gen: LoadGenerator, client: str, name: str, model: str, conc: int
    ) -> dict[str, Any]:
        """One point of one client: bench's load generator or perf_analyzer."""
        opts, server, info = self.opts, self.started[name][model], self.infos[model]
        if client.startswith("bench"):
            # Triton takes batch-only inputs as [B, 1] (dims [1], reshape [])
            rows = (
                configs.triton_rows(info, self.rows[model])
                if name == "triton"
                else self.rows[model]
            )
            api = "v2-stream" if client == "bench-stream" else "v2"
            workload = build_workload(info, api, rows, stream_window=opts.stream_window)
            try:
                # No /metrics scrapes at the window's edges: they would cost nnserve alone.
                return measure_point(gen, server.address, workload, conc, server=server,
                                     metrics=False, warmup_s=opts.warmup_s,
                                     duration_s=opts.duration_s,
                                     timeout_s=opts.timeout_s)  # fmt: skip
            except RuntimeError as exc:  # e.g. a server that went away
                return {"error": str(exc)[:400]}
        assert self.tool is not None
        procs = harness.process_tree(server.process.pid)
        t0, cpu0 = time.monotonic(), harness.cpu_seconds(procs)
        try:
            streaming = client.endswith("stream")
            p = perf_analyzer.measure(self.tool, server.address, info, self.rows[model], conc,
                                      opts.perf_analyzer_window_ms, streaming)  # fmt: skip
        except grpc.RpcError as exc:  # the server went away (its log is kept)
            return {"error": f"{exc.code().name}: {exc.details()}"[:400]}  # type: ignore[attr-defined]
        if "error" in p:
            return {"error": str(p["error"])[:400]}
        cores = (harness.cpu_seconds(procs) - cpu0) / (time.monotonic() - t0)
        ips = p["inferences_per_s"]
        return {
            "inferences_per_s": ips, "p50_ms": round(p["p50_ms"], 3),
            "p99_ms": round(p["p99_ms"], 3), "server_cores": round(cores, 3),
            # Over perf_analyzer's whole run (warm-up and unstable windows too): an estimate.
            "server_cpu_us_per_request": round(cores * 1e6 / ips, 1) if ips else None,
            "client_cores": p.get("client_cores"), "stability_pct": p.get("stability_pct"),
        }  # fmt: skip

    def rounds(self, gen: LoadGenerator) -> None:
        opts, skip = self.opts, self.doc["not_applicable"]
        streams = ["-stream"] if opts.stream_window else []
        groups = [[f"bench{s}" for s in ["", *streams]]]
        if self.tool is not None:
            groups.append([f"perf_analyzer{s}" for s in ["", *streams]])
        for rnd in range(1, opts.rounds + 1):
            self.pin_servers()  # again each round: MLServer may have restarted a worker
            log.info("round %d/%d (load average %.2f)", rnd, opts.rounds, harness.loadavg()[0])
            for model, group, conc in itertools.product(self.infos, groups, opts.concurrency):
                for name, client in itertools.product(opts.servers, group):
                    if client in skip.get(name, {}) or not self.alive(name):
                        continue
                    p = self.point(gen, client, name, model, conc)
                    if any(s in p.get("error", "") for s in PA_CANNOT_DRIVE):
                        log.warning("perf_analyzer cannot drive %s: %s", name, p["error"])
                        skip.setdefault(name, {}).update(dict.fromkeys(group, p["error"]))
                        continue
                    self.raw.setdefault((client, name, model, conc), []).append(p)
                    _log_point(rnd, client, name, model, conc, p)

    def run(self) -> dict[str, Any]:
        opts, doc = self.opts, self.doc
        if self.split:  # this process first: the load processes and perf_analyzer inherit it
            harness.pin([os.getpid()], self.split[0])
        if opts.perf_analyzer:
            try:
                self.tool = perf_analyzer.ensure()
                doc["perf_analyzer_version"] = self.tool.version()
            except perf_analyzer.PerfAnalyzerUnavailable as exc:
                log.warning("perf_analyzer unavailable: %s", exc)
                doc["perf_analyzer_status"] = f"unavailable: {exc}"
        stamp = "peers-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        try:
            with LoadGenerator(1) as gen:
                for name in opts.servers:
                    self.bring_up(name)
                self.rounds(gen)
        finally:
            for by in self.started.values():
                for server in set(by.values()):
                    server.stop()
            failed = any("error" in p for rounds in self.raw.values() for p in rounds)
            if all(v == "ok" for v in doc["status"].values()) and not failed:
                shutil.rmtree(self.work, ignore_errors=True)  # logs stay when something failed
            else:
                log.info("server logs kept in %s", self.work)
        doc["points"] = [{"client": c, "server": s, "model": m, "concurrency": k,
                          **harness.median_of(v), "per_round": v}
                         for (c, s, m, k), v in self.raw.items()]  # fmt: skip
        doc["machine"]["loadavg_end"] = harness.loadavg()
        doc["finished_at"] = _now()
        doc["files"] = [str(report.write_json(doc, opts.out, stamp, "peers-latest"))]
        if opts.plots:
            try:
                doc["files"] += [str(p) for p in report.peers_plots(doc, opts.out, stamp)]
            except ImportError as exc:  # matplotlib lives in the `train` extra
                log.warning("no plots: %s", exc)
        return doc


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _log_point(rnd: int, client: str, name: str, model: str, conc: int, p: dict[str, Any]) -> None:
    where = f"r{rnd} {client:<20} {name:<14} {model} c={conc:<3}"
    if "error" in p:
        log.warning("%s failed: %s", where, p["error"])
        return
    errors = f"  errors {p['error_count']}" if p.get("error_count") else ""
    log.info("%s %7.0f inf/s  p50 %6.3f  p99 %6.3f ms  srv %.2f cores %s us/req%s", where,
             p["inferences_per_s"], p["p50_ms"], p["p99_ms"], p["server_cores"],
             p["server_cpu_us_per_request"], errors)  # fmt: skip


def run(opts: PeerOptions) -> dict[str, Any]:
    return PeersRun(opts).run()
