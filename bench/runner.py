"""One benchmark run: start services (or target --address), floor, points, memory, report."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import floor, procstat, report, targets
from bench.loadgen import LoadGenerator, PointResult
from bench.servers import Service, metric_sums, start_service, wait_serving
from bench.workload import (
    ModelInfo,
    Workload,
    build_workload,
    check_response,
    from_metadata,
    from_repository,
    sample_rows,
)
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger("bench")

ALL_MODELS = ("perceptron", "mlp", "cnn", "lstm", "transformer")
SERVICE_OF_TASK = {"classify": "classify", "sequence": "sequence"}


@dataclass
class Options:
    repository: Path = Path("model_repository")
    models: list[str] = field(default_factory=lambda: list(ALL_MODELS))
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    duration_s: float = 5.0
    warmup_s: float = 1.0
    apis: list[str] = field(default_factory=lambda: ["v2", "domain"])
    workers: int = 1
    server_args: list[str] = field(default_factory=list)
    address: str | None = None
    server_pid: int | None = None
    clients: int = 1  # load-generator processes
    channels: int = 0  # per load process; 0 = max(1, workers)
    seq_len: int = 32
    pool: int = 16  # distinct requests per model and API
    floor_batches: list[int] = field(default_factory=lambda: [1, 32])
    floor_duration_s: float = 2.0
    floor: bool = True
    plots: bool = True
    out: Path = Path("bench/results")
    perf_analyzer: bool = False
    perf_analyzer_window_ms: int = 3000
    loadgen_ceiling: bool = False
    timeout_s: float = 30.0
    stream_window: int = 4  # v2-stream: requests in flight per stream


# ---------------------------------------------------------------------- context


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version() -> dict[str, Any]:
    """What was measured: HEAD, the last commit touching services/, and local edits there."""
    return {
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "services_commit": _git("log", "-1", "--format=%h %s", "--", "services"),
        "services_uncommitted": bool(_git("status", "--porcelain", "--", "services")),
    }


def machine_context() -> dict[str, Any]:
    import numpy
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "cpu_model": procstat.cpu_model(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "kernel": platform.release(),
        "loadavg_start": procstat.loadavg(),
        **code_version(),
    }


# ---------------------------------------------------------------------- measuring


class PointMeter:
    """CPU of server, load generator and the whole machine, plus server metrics, at the
    edges of a point's measurement window."""

    def __init__(
        self, server_pids: list[int], client_pids: list[int], service: Service | None, model: str
    ):
        self.server_pids = server_pids
        self.client_pids = client_pids
        self.service = service
        self.model = model
        self._start: dict[str, Any] = {}
        self._end: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        busy, _ = procstat.machine_cpu_seconds()
        reading: dict[str, Any] = {
            "t": time.monotonic(),
            "server": procstat.cpu_seconds(self.server_pids),
            "client": procstat.cpu_seconds(self.client_pids),
            "machine": busy,
            "procs": procstat.all_process_cpu(),
        }
        if self.service is not None and self.service.metrics_port > 0:
            try:
                reading["metrics"] = metric_sums(self.service.scrape(), self.model)
            except OSError:
                reading["metrics"] = {}
        return reading

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        self._end = self._read()

    def figures(self, requests: int) -> dict[str, Any]:
        a, b = self._start, self._end
        wall = b["t"] - a["t"]
        server = (b["server"] - a["server"]) / wall if self.server_pids else None
        client = (b["client"] - a["client"]) / wall
        machine = (b["machine"] - a["machine"]) / wall
        out: dict[str, Any] = {
            "server_cores": round(server, 3) if server is not None else None,
            "client_cores": round(client, 3),
            "machine_busy_cores": round(machine, 3),
            "other_cores": round(max(0.0, machine - client - (server or 0.0)), 3),
            "server_cpu_us_per_request": round((server or 0) * wall * 1e6 / requests, 1)
            if requests and server is not None
            else None,
            "client_cpu_us_per_request": round(client * wall * 1e6 / requests, 1)
            if requests
            else None,
            "loadavg": procstat.loadavg(),
        }
        mine = set(self.server_pids) | set(self.client_pids) | {os.getpid()}
        delta = {pid: cpu - a["procs"].get(pid, 0.0) for pid, cpu in b["procs"].items()}
        out["busiest_other_processes"] = procstat.busy_processes(delta, mine, top=3)
        ma, mb = a.get("metrics"), b.get("metrics")
        if ma is not None and mb:

            def delta_of(name: str) -> float:
                return mb.get(name, 0.0) - ma.get(name, 0.0)

            batches = delta_of("nnserve_batch_size_count")
            if batches > 0:
                out["batches"] = int(batches)
                out["mean_batch_size"] = round(delta_of("nnserve_batch_size_sum") / batches, 2)
                out["mean_compute_ms"] = round(
                    delta_of("nnserve_compute_seconds_sum") / batches * 1e3, 3
                )
                waits = delta_of("nnserve_queue_wait_seconds_count")
                if waits > 0:
                    out["mean_queue_wait_ms"] = round(
                        delta_of("nnserve_queue_wait_seconds_sum") / waits * 1e3, 3
                    )
            handled = delta_of("nnserve_request_duration_seconds_count")
            if handled > 0:
                out["server_mean_request_ms"] = round(
                    delta_of("nnserve_request_duration_seconds_sum") / handled * 1e3, 3
                )
        return out


def run_point(
    gen: LoadGenerator,
    workload: Workload,
    address: str,
    concurrency: int,
    opts: Options,
    server_pids: list[int],
    service: Service | None,
) -> dict[str, Any]:
    meter = PointMeter(server_pids, gen.pids(), service, workload.model)
    result: PointResult = gen.run(
        address,
        workload.method,
        workload.payloads,
        concurrency,
        warmup_s=opts.warmup_s,
        duration_s=opts.duration_s,
        channels=opts.channels or max(1, opts.workers),
        timeout_s=opts.timeout_s,
        rows=workload.rows_per_request,
        streams=workload.streams(concurrency),
        check=check_response,
        at_start=meter.start,
        at_end=meter.stop,
    )
    point = {
        "model": workload.model,
        "api": workload.api,
        **result.summary(workload.rows_per_request),
    }
    if workload.stream_window:
        point["streams"] = workload.streams(concurrency)
    point.update(meter.figures(result.requests))
    # One load process is single-threaded Python: near one core busy, it is the limit.
    point["loadgen_saturated"] = point["client_cores"] >= 0.85 * result.processes
    return point


def _log_point(p: dict[str, Any], index: int, total: int) -> None:
    extra = f" batch {p['mean_batch_size']}" if "mean_batch_size" in p else ""
    server = f"{p['server_cores']:.2f}" if p.get("server_cores") is not None else "?"
    log.info(
        "[%d/%d] %-11s %-6s c=%-3d %8.0f inf/s  p50 %6.2f  p99 %6.2f ms  errors %d | "
        "cores: server %s client %.2f other %.2f |%s",
        index,
        total,
        p["model"],
        p["api"],
        p["concurrency"],
        p["inferences_per_s"],
        p["p50_ms"],
        p["p99_ms"],
        p["error_count"],
        server,
        p["client_cores"],
        p["other_cores"],
        extra,
    )
    if p["error_count"]:
        log.warning("  errors %s, e.g. %s", p["errors"], p["error_example"])
    if p["loadgen_saturated"]:
        log.warning("  the load generator was near its CPU limit: try --clients 2 or more")
    if p["response_check"] != "ok":
        log.warning("  response check failed: %s", p["response_check"])


# ---------------------------------------------------------------------- services


def _memory(services: list[Service]) -> dict[str, Any]:
    per = {s.name: procstat.memory(s.pids()) for s in services}
    total = procstat.Memory(
        sum(m.rss_bytes for m in per.values()),
        sum(m.pss_bytes for m in per.values()),
        sum(m.peak_rss_bytes for m in per.values()),
        sum(m.processes for m in per.values()),
    )
    return {"services": {k: m.as_dict() for k, m in per.items()}, "total": total.as_dict()}


def start_services(opts: Options, infos: dict[str, ModelInfo], log_dir: Path) -> dict[str, Service]:
    """One service per task among the chosen models, started together, then health-checked."""
    wanted: dict[str, list[str]] = {}
    for info in infos.values():
        wanted.setdefault(SERVICE_OF_TASK[info.task], []).append(info.name)
    services: dict[str, Service] = {}
    try:
        for name, models in wanted.items():
            services[name] = start_service(
                name,
                opts.repository.resolve(),
                log_dir,
                models=models,
                workers=opts.workers,
                extra_args=opts.server_args,
            )
        for service in services.values():
            wait_serving(service)
            log.info(
                "%s service on %s serving %s",
                service.name,
                service.address,
                ", ".join(service.models),
            )
    except BaseException:
        for service in services.values():
            service.stop()
        raise
    return services


def _remote_infos(address: str, models: list[str], repository: Path | None) -> dict[str, ModelInfo]:
    infos = {}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in models:
            if repository is not None and (repository / name).is_dir():
                infos[name] = from_repository(repository, name)
            else:
                infos[name] = from_metadata(
                    stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
                )
    return infos


# ---------------------------------------------------------------------- the run


def _floor(doc: dict[str, Any], info: ModelInfo, rows: list[Any], opts: Options) -> None:
    """In-process ONNX Runtime per batch size; a failure is recorded, not fatal."""
    try:
        session = floor.open_model(info)
    except Exception as exc:
        log.error("floor %s: cannot open the model: %s", info.name, exc)
        doc.setdefault("floor_errors", {})[info.name] = f"{type(exc).__name__}: {exc}"
        return
    for batch in opts.floor_batches:
        try:
            f = floor.measure(info, rows, batch, opts.floor_duration_s, session=session).as_dict()
        except Exception as exc:  # e.g. a graph that rejects this batch or length
            log.error("floor %s b%d failed: %s", info.name, batch, exc)
            doc.setdefault("floor_errors", {})[f"{info.name}/b{batch}"] = (
                f"{type(exc).__name__}: {exc}"
            )
            continue
        doc["floor"].append(f)
        log.info(
            "floor %-11s b%-3d %9.0f inf/s  p50 %.3f  p99 %.3f ms per call",
            info.name,
            batch,
            f["inferences_per_s"],
            f["p50_ms"],
            f["p99_ms"],
        )


def run(opts: Options) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    doc: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine_context(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "floor": [],
        "points": [],
    }
    remote = opts.address is not None
    if remote:
        apis = [a for a in opts.apis if a != "domain"] or ["v2"]  # KServe v2 only
        repository = opts.repository if opts.repository.is_dir() else None
        infos = _remote_infos(opts.address, opts.models, repository)  # type: ignore[arg-type]
    else:
        apis = opts.apis
        if not opts.repository.is_dir():
            raise SystemExit(
                f"model repository {opts.repository} not found: run `make models` first, "
                "or pass --repository DIR or --address HOST:PORT"
            )
        infos = {m: from_repository(opts.repository, m) for m in opts.models}
    rows = {m: sample_rows(info, opts.pool, opts.seq_len) for m, info in infos.items()}
    doc["workload"] = {
        m: {
            "inputs": {k: list(v.shape) for k, v in rows[m][0].items()},
            "distinct_requests": len(rows[m]),
            "source": "model.json goldens + seeded random"
            if info.spec
            else "ModelMetadata, random",
        }
        for m, info in infos.items()
    }
    doc["loadgen"] = {
        "implementation": "grpc.aio closed loop, pre-serialized request bytes, raw response bytes",
        "processes": opts.clients,
        "channels_per_process": opts.channels or max(1, opts.workers),
    }

    log_dir = Path(tempfile.mkdtemp(prefix="nnserve-bench-"))
    services: dict[str, Service] = {}
    gen = LoadGenerator(opts.clients)
    try:
        if not remote:
            t0 = time.monotonic()
            services = start_services(opts, infos, log_dir)
            doc["target"] = {
                "started_services": {
                    s.name: {"models": s.models, "workers": s.workers} for s in services.values()
                },
                "server_args": opts.server_args,
                "startup_s": round(time.monotonic() - t0, 2),
            }
            time.sleep(0.5)  # let start-up allocations settle before reading memory
            doc["memory"] = {"after_load": _memory(list(services.values()))}
            mem = doc["memory"]["after_load"]["total"]
            log.info(
                "server memory with models loaded: RSS %.1f MiB (PSS %.1f MiB)",
                mem["rss_mib"],
                mem["pss_mib"],
            )
        else:
            doc["target"] = {"address": opts.address, "server_pid": opts.server_pid}

        if opts.loadgen_ceiling:
            from bench.nullserver import measure_ceiling

            doc["loadgen"]["ceiling"] = measure_ceiling(gen, opts)

        plan = [
            (m, api, c)
            for m in infos
            for api in apis
            for c in opts.concurrency
            if api != "domain" or infos[m].has_domain_api
        ]
        index = 0
        for name, info in infos.items():
            if opts.floor and info.spec is not None:
                _floor(doc, info, rows[name], opts)
            service = services.get(SERVICE_OF_TASK.get(info.task, ""))
            address = opts.address or (service.address if service else "")
            for api in apis:
                if api == "domain" and not info.has_domain_api:
                    continue
                workload = build_workload(info, api, rows[name], stream_window=opts.stream_window)
                for conc in opts.concurrency:
                    index += 1
                    if service is not None:
                        server_pids = service.pids()
                    elif opts.server_pid:
                        server_pids = procstat.process_tree(opts.server_pid)
                    else:
                        server_pids = []
                    point = run_point(gen, workload, address, conc, opts, server_pids, service)
                    doc["points"].append(point)
                    _log_point(point, index, len(plan))

        if services:
            doc["memory"]["after_run"] = _memory(list(services.values()))
        if opts.perf_analyzer:
            from bench import perf_analyzer

            doc["perf_analyzer"] = perf_analyzer.run_all(
                infos,
                {
                    m: (opts.address or services[SERVICE_OF_TASK[i.task]].address)
                    for m, i in infos.items()
                },
                opts.concurrency,
                rows,
                opts.perf_analyzer_window_ms,
            )
    finally:
        gen.close()
        for service in services.values():
            service.stop()

    doc["machine"]["loadavg_end"] = procstat.loadavg()
    doc["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc["targets"] = targets.evaluate(doc["points"])
    path = report.write_json(doc, opts.out, stamp)
    doc["files"] = [str(path)]
    if opts.plots:
        try:
            doc["files"] += [str(p) for p in report.plot(doc, opts.out, stamp)]
        except ImportError as exc:  # matplotlib lives in the `train` extra
            log.warning("no plots: %s", exc)
    return doc
