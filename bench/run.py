"""`python -m bench`'s runs. A run: start the services hosting the chosen models (or
target --address), the in-process floor, closed-loop points per model x API x
concurrency, server memory, perf_analyzer on the same points; JSON, table and plots.
A soak: load on the mlp for a long time while the server's memory is read."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import harness, perf_analyzer, report
from bench.harness import (
    SERVICE_OF_TASK,
    Server,
    measure_point,
    start_noop,
    start_service,
    wait_ready,
)
from bench.loadgen import LoadGenerator
from bench.workload import (
    ModelInfo,
    build_workload,
    floor_point,
    from_metadata,
    from_repository,
    open_model,
    sample_rows,
)
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger("bench")

ALL_MODELS = ("perceptron", "mlp", "cnn", "lstm", "transformer")


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


def _stamp() -> tuple[str, str]:
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="seconds"), now.strftime("%Y%m%dT%H%M%SZ")


def _point_args(opts: Options, warmup_s: float | None = None) -> dict[str, Any]:
    """measure_point's window and connection arguments for this run."""
    warmup = opts.warmup_s if warmup_s is None else warmup_s
    return {"warmup_s": warmup, "duration_s": opts.duration_s, "timeout_s": opts.timeout_s,
            "channels": opts.channels or max(1, opts.workers)}  # fmt: skip


def start_services(opts: Options, infos: dict[str, ModelInfo], log_dir: Path) -> dict[str, Server]:
    """One service per task among the chosen models, started together, then waited for."""
    wanted: dict[str, list[str]] = {}
    for info in infos.values():
        wanted.setdefault(SERVICE_OF_TASK[info.task], []).append(info.name)
    services: dict[str, Server] = {}
    try:
        for name, models in wanted.items():
            services[name] = start_service(
                name, opts.repository, log_dir, models, workers=opts.workers,
                extra_args=opts.server_args,
            )  # fmt: skip
        for s in services.values():
            wait_ready(s)
            log.info("%s service on %s serving %s", s.name, s.address, ", ".join(s.models))
    except BaseException:
        for s in services.values():
            s.stop()
        raise
    return services


def _memory(services: dict[str, Server]) -> dict[str, Any]:
    per = {name: harness.memory(s.pids()) for name, s in services.items()}
    keys = ("rss_mib", "pss_mib", "processes")
    return {"services": per, "total": {k: round(sum(m[k] for m in per.values()), 1) for k in keys}}


def _infos(opts: Options) -> dict[str, ModelInfo]:
    """model.json where the repository has the model; else (with --address) ModelMetadata."""
    if opts.address is None:
        if not opts.repository.is_dir():
            raise SystemExit(f"model repository {opts.repository} not found: run `make models` "
                             "first, or pass --repository DIR or --address HOST:PORT")  # fmt: skip
        return {m: from_repository(opts.repository, m) for m in opts.models}
    infos = {}
    with grpc.insecure_channel(opts.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in opts.models:
            if (opts.repository / name).is_dir():
                infos[name] = from_repository(opts.repository, name)
            else:
                meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
                infos[name] = from_metadata(meta)
    return infos


def _floor(doc: dict[str, Any], info: ModelInfo, rows: list[Any], opts: Options) -> None:
    """In-process ONNX Runtime per batch size; a failure is recorded, not fatal."""
    session = None
    for batch in opts.floor_batches:
        try:
            session = session or open_model(info)
            f = floor_point(session, info, rows, batch, opts.floor_duration_s)
        except Exception as exc:  # e.g. a graph that rejects this batch or length
            log.error("floor %s b%d failed: %s", info.name, batch, exc)
            errors = doc.setdefault("floor_errors", {})
            errors[f"{info.name}/b{batch}"] = f"{type(exc).__name__}: {exc}"
            continue
        doc["floor"].append(f)
        log.info("floor %-11s b%-3d %9.0f inf/s  p50 %.3f  p99 %.3f ms per call", info.name,
                 batch, f["inferences_per_s"], f["p50_ms"], f["p99_ms"])  # fmt: skip


def _log_point(p: dict[str, Any], index: int, total: int) -> None:
    log.info("[%d/%d] %-11s %-9s c=%-3d %8.0f inf/s  p50 %6.2f  p99 %6.2f ms  errors %d | "
             "cores: server %s client %.2f other %.2f | batch %s", index, total, p["model"],
             p["api"], p["concurrency"], p["inferences_per_s"], p["p50_ms"], p["p99_ms"],
             p["error_count"], report.fmt(p["server_cores"]), p["client_cores"],
             p["other_cores"], p.get("mean_batch_size", "-"))  # fmt: skip
    if p["error_count"]:
        log.warning("  errors %s, e.g. %s", p["errors"], p["error_example"])
    if p["loadgen_saturated"]:
        log.warning("  the load generator was near its CPU limit: try --clients 2 or more")
    if p["response_check"] != "ok":
        log.warning("  response check failed: %s", p["response_check"])


def loadgen_ceiling(gen: LoadGenerator, opts: Options, log_dir: Path) -> list[dict[str, Any]]:
    """The load generator against the no-op server (mlp-sized answers): its CPU per
    request bounds what one load process can send."""
    info = from_repository(opts.repository, "mlp")
    server = start_noop(opts.repository, "mlp", log_dir)
    try:
        wait_ready(server)
        workload = build_workload(info, "v2", sample_rows(info, opts.pool))
        points = []
        for conc in (1, 32, 128):
            p = measure_point(
                gen, server.address, workload, conc, server=server, **_point_args(opts)
            )
            log.info("load generator vs no-op server c=%d: %.0f req/s, client %.2f cores "
                     "(%s us/request), no-op server %.2f cores", conc, p["inferences_per_s"],
                     p["client_cores"], p["client_cpu_us_per_request"],
                     p["server_cores"])  # fmt: skip
            points.append(p)
        return points
    finally:
        server.stop()


def run(opts: Options) -> dict[str, Any]:
    started, stamp = _stamp()
    infos = _infos(opts)
    # Another server: KServe v2 only.
    apis = ([a for a in opts.apis if a != "domain"] or ["v2"]) if opts.address else opts.apis
    rows = {m: sample_rows(info, opts.pool, opts.seq_len) for m, info in infos.items()}
    doc: dict[str, Any] = {
        "schema": 1, "started_at": started, "machine": harness.machine_context(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "workload": {m: {"inputs": {k: list(v.shape) for k, v in rows[m][0].items()},
                         "distinct_requests": len(rows[m]),
                         "source": "model.json goldens + seeded random" if i.spec
                         else "ModelMetadata, random"} for m, i in infos.items()},
        "loadgen": {"processes": opts.clients,
                    "channels_per_process": opts.channels or max(1, opts.workers)},
        "floor": [], "points": [],
    }  # fmt: skip
    log_dir = Path(tempfile.mkdtemp(prefix="nnserve-bench-"))
    services: dict[str, Server] = {}
    gen = LoadGenerator(opts.clients)
    try:
        if opts.address is None:
            t0 = time.monotonic()
            services = start_services(opts, infos, log_dir)
            doc["target"] = {"services": {s.name: list(s.models) for s in services.values()},
                             "workers": opts.workers, "server_args": opts.server_args,
                             "startup_s": round(time.monotonic() - t0, 2)}  # fmt: skip
            time.sleep(0.5)  # let start-up allocations settle before reading memory
            doc["memory"] = {"after_load": _memory(services)}
            rss = doc["memory"]["after_load"]["total"]["rss_mib"]
            log.info("server memory with models loaded: RSS %.1f MiB", rss)
        else:
            doc["target"] = {"address": opts.address, "server_pid": opts.server_pid}
        if opts.loadgen_ceiling:
            doc["loadgen"]["ceiling"] = loadgen_ceiling(gen, opts, log_dir)
        plan = [(m, a) for m in infos for a in apis if a != "domain" or infos[m].has_domain_api]
        total, index, floored = len(plan) * len(opts.concurrency), 0, set()
        for name, api in plan:
            info = infos[name]
            if opts.floor and info.spec is not None and name not in floored:
                floored.add(name)
                _floor(doc, info, rows[name], opts)
            service = services.get(SERVICE_OF_TASK.get(info.task, ""))
            address = opts.address or (service.address if service else "")
            tree = harness.process_tree(opts.server_pid) if opts.server_pid else []
            workload = build_workload(info, api, rows[name], stream_window=opts.stream_window)
            for conc in opts.concurrency:
                index += 1
                pids = [q.pid for q in tree]
                p = measure_point(gen, address, workload, conc, server=service, server_pids=pids,
                                  **_point_args(opts))  # fmt: skip
                doc["points"].append(p)
                _log_point(p, index, total)
        if services:
            doc["memory"]["after_run"] = _memory(services)
        if opts.perf_analyzer:
            addresses = {m: opts.address or services[SERVICE_OF_TASK[i.task]].address
                         for m, i in infos.items()}  # fmt: skip
            doc["perf_analyzer"] = perf_analyzer_points(infos, addresses, rows, opts)
    finally:
        gen.close()
        for s in services.values():
            s.stop()
    doc["machine"]["loadavg_end"] = harness.loadavg()
    doc["finished_at"] = _stamp()[0]
    doc["targets"] = report.targets(doc["points"])
    doc["files"] = [str(report.write_json(doc, opts.out, stamp, "latest"))]
    if opts.plots:
        try:
            doc["files"] += [str(p) for p in report.run_plots(doc, opts.out, stamp)]
        except ImportError as exc:  # matplotlib lives in the `train` extra
            log.warning("no plots: %s", exc)
    return doc


def perf_analyzer_points(infos: dict[str, ModelInfo], addresses: dict[str, str],
                         rows: dict[str, Any], opts: Options) -> dict[str, Any]:  # fmt: skip
    """perf_analyzer at every model and concurrency; a block that says why when it cannot."""
    try:
        tool = perf_analyzer.ensure()
    except perf_analyzer.PerfAnalyzerUnavailable as exc:
        log.warning("perf_analyzer unavailable: %s", exc)
        return {"status": f"unavailable: {exc}", "points": []}
    out: dict[str, Any] = {"status": "ok", "version": tool.version(), "points": [], "errors": []}
    for name, info in infos.items():
        for conc in opts.concurrency:
            window = opts.perf_analyzer_window_ms
            p = perf_analyzer.measure(tool, addresses[name], info, rows[name], conc, window)
            if "error" in p:
                log.warning("perf_analyzer %s c=%d failed: %s", name, conc, p["error"])
                out["status"] = f"some points failed ({name}: {p['error']})"
                out["errors"].append({"model": name, "concurrency": conc, **p})
                if perf_analyzer.EMPTY_SHAPE_HINT in p["error"]:
                    break  # the same at every concurrency
                continue
            log.info("perf_analyzer %-11s c=%-3d %8.0f inf/s  p50 %.3f  p99 %.3f ms", name,
                     conc, p["inferences_per_s"], p["p50_ms"], p["p99_ms"])  # fmt: skip
            out["points"].append(p)
    return out


# ---------------------------------------------------------------------- soak

SOAK_MODEL = "mlp"
MAX_GROWTH_PCT = 5.0


def soak(opts: Options, seconds: float, concurrency: int, interval: float) -> dict[str, Any]:
    """The classify service under load on the mlp for `seconds`, in windows of `interval`
    alternating KServe v2 and the domain API (new connections each window); its RSS after
    every window. The first window is a warm-up: lazy first-use allocations are not
    growth. Pass: RSS grows less than 5% from start to end and no request fails."""
    started, stamp = _stamp()
    info = from_repository(opts.repository, SOAK_MODEL)
    rows = sample_rows(info, opts.pool, opts.seq_len)
    workloads = [build_workload(info, api, rows) for api in ("v2", "domain") if api in opts.apis]
    classify = [m for m in ("perceptron", "mlp", "cnn") if (opts.repository / m).is_dir()]
    samples: list[dict[str, Any]] = []
    gen = LoadGenerator(opts.clients)
    log_dir = Path(tempfile.mkdtemp(prefix="nnserve-soak-"))
    service = start_service("classify", opts.repository, log_dir, classify,
                            workers=opts.workers, extra_args=opts.server_args)  # fmt: skip
    window = {**_point_args(opts, warmup_s=0.0), "duration_s": interval}
    try:
        wait_ready(service)
        idle = harness.memory(service.pids())["rss_mib"]
        log.info("soak: classify on %s, idle RSS %.1f MiB; %d s at concurrency %d",
                 service.address, idle, seconds, concurrency)  # fmt: skip
        t0 = time.monotonic()
        while not samples or time.monotonic() - t0 < seconds + interval:  # 0: the warm-up
            workload = workloads[len(samples) % len(workloads)]
            p = measure_point(gen, service.address, workload, concurrency, server=service, **window)
            mem = harness.memory(service.pids())
            samples.append({"window": len(samples), "t_s": round(time.monotonic() - t0, 1),
                            "api": workload.api, **mem, "requests": p["requests"],
                            "inferences_per_s": p["inferences_per_s"], "p99_ms": p["p99_ms"],
                            "errors": p["error_count"]})  # fmt: skip
            log.info("soak %5.0f s %-6s RSS %7.1f MiB  %7.0f inf/s  p99 %6.2f ms  errors %d%s",
                     samples[-1]["t_s"], workload.api, mem["rss_mib"], p["inferences_per_s"],
                     p["p99_ms"], p["error_count"],
                     "  (warm-up)" * (len(samples) == 1))  # fmt: skip
    finally:
        gen.close()
        service.stop()
    measured = samples[1:] or samples
    start_rss, end_rss = measured[0]["rss_mib"], measured[-1]["rss_mib"]
    growth = (end_rss - start_rss) / start_rss * 100 if start_rss else float("nan")
    t, rss = np.array([s["t_s"] for s in measured]), np.array([s["rss_mib"] for s in measured])
    slope = float(np.polyfit(t, rss, 1)[0]) * 3600 if len(measured) > 2 else float("nan")
    errors = sum(s["errors"] for s in samples)
    doc: dict[str, Any] = {
        "schema": 1, "kind": "soak", "started_at": started,
        "machine": {**harness.machine_context(), "loadavg_end": harness.loadavg()},
        "soak": {"model": SOAK_MODEL, "seconds": seconds, "concurrency": concurrency,
                 "interval_s": interval, "idle_rss_mib": idle, "start_rss_mib": start_rss,
                 "end_rss_mib": end_rss, "peak_rss_mib": float(rss.max()),
                 "growth_pct": round(growth, 2), "trend_mib_per_hour": round(slope, 2),
                 "requests": sum(s["requests"] for s in samples), "errors": errors,
                 "max_growth_pct": MAX_GROWTH_PCT,
                 "ok": bool(growth < MAX_GROWTH_PCT and errors == 0)},
        "samples": samples,
    }  # fmt: skip
    doc["files"] = [str(report.write_json(doc, opts.out, f"soak-{stamp}", "latest-soak"))]
    if opts.plots:
        try:
            doc["files"].append(str(report.soak_plot(doc, opts.out, stamp)))
        except ImportError as exc:  # matplotlib lives in the `train` extra
            log.warning("no plot: %s", exc)
    return doc


def soak_summary(doc: dict[str, Any]) -> str:
    s = doc["soak"]
    return (
        f"soak {'OK' if s['ok'] else 'FAILED'}: mlp at concurrency {s['concurrency']} for "
        f"{s['seconds']:.0f} s, {s['requests']:,} requests, {s['errors']} errors; server RSS "
        f"{s['start_rss_mib']} MiB -> {s['end_rss_mib']} MiB ({s['growth_pct']:+.2f}%, limit "
        f"{s['max_growth_pct']}%), trend {s['trend_mib_per_hour']:+.1f} MiB/hour, idle before "
        f"load {s['idle_rss_mib']} MiB\nresults: {', '.join(doc['files'])}"
    )
