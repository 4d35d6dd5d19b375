"""Soak: hold closed-loop load on the mlp for a long time and watch the server's memory.

The classify service is started as in a normal run (all its models loaded); windows of
`interval` seconds alternate between the KServe v2 and the domain API (new connections
each window). RSS (all processes of the service) is read after every window. The start
value is taken after one warm-up window, so lazy first-use allocations do not count as
growth. Pass: RSS grows less than 5% from start to end and no request fails.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import procstat
from bench.loadgen import LoadGenerator
from bench.runner import Options, machine_context
from bench.servers import Service, start_service, wait_serving
from bench.workload import build_workload, check_response, from_repository, sample_rows

log = logging.getLogger("bench")

MODEL = "mlp"
MAX_GROWTH_PCT = 5.0


def run(opts: Options, seconds: float, concurrency: int, interval: float) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    info = from_repository(opts.repository, MODEL)
    rows = sample_rows(info, opts.pool, opts.seq_len)
    workloads = [build_workload(info, api, rows) for api in ("v2", "domain") if api in opts.apis]
    classify_models = [m for m in ("perceptron", "mlp", "cnn") if (opts.repository / m).is_dir()]
    service: Service | None = None
    samples: list[dict[str, Any]] = []
    log_dir = Path(tempfile.mkdtemp(prefix="nnserve-soak-"))
    gen = LoadGenerator(opts.clients)
    try:
        service = start_service(
            "classify",
            opts.repository.resolve(),
            log_dir,
            models=classify_models,
            workers=opts.workers,
            extra_args=opts.server_args,
        )
        wait_serving(service)
        idle = procstat.memory(service.pids())
        log.info(
            "soak: classify on %s, idle RSS %.1f MiB; %d s at concurrency %d",
            service.address,
            idle.rss_bytes / 2**20,
            seconds,
            concurrency,
        )
        t0 = time.monotonic()
        window = 0
        while True:
            elapsed = time.monotonic() - t0
            if window > 0 and elapsed >= seconds + interval:  # window 0 is the warm-up
                break
            workload = workloads[window % len(workloads)]
            result = gen.run(
                service.address,
                workload.method,
                workload.payloads,
                concurrency,
                warmup_s=0.0,
                duration_s=interval,
                channels=opts.channels or max(1, opts.workers),
                timeout_s=opts.timeout_s,
                check=check_response,
            )
            mem = procstat.memory(service.pids())
            s = result.summary(1)
            sample = {
                "window": window,
                "t_s": round(time.monotonic() - t0, 1),
                "api": workload.api,
                "rss_mib": round(mem.rss_bytes / 2**20, 2),
                "pss_mib": round(mem.pss_bytes / 2**20, 2),
                "requests": s["requests"],
                "inferences_per_s": s["inferences_per_s"],
                "p99_ms": s["p99_ms"],
                "errors": s["error_count"],
            }
            samples.append(sample)
            log.info(
                "soak %5.0f s %-6s RSS %7.1f MiB  %7.0f inf/s  p99 %6.2f ms  errors %d%s",
                sample["t_s"],
                workload.api,
                sample["rss_mib"],
                sample["inferences_per_s"],
                sample["p99_ms"],
                sample["errors"],
                "  (warm-up)" if window == 0 else "",
            )
            window += 1
    finally:
        gen.close()
        if service is not None:
            service.stop()

    measured = samples[1:] or samples
    start_rss, end_rss = measured[0]["rss_mib"], measured[-1]["rss_mib"]
    growth = (end_rss - start_rss) / start_rss * 100 if start_rss else float("nan")
    t = np.array([s["t_s"] for s in measured])
    rss = np.array([s["rss_mib"] for s in measured])
    slope = float(np.polyfit(t, rss, 1)[0]) * 3600 if len(measured) > 2 else float("nan")
    errors = sum(s["errors"] for s in samples)
    doc = {
        "schema": 1,
        "kind": "soak",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {**machine_context(), "loadavg_end": procstat.loadavg()},
        "soak": {
            "model": MODEL,
            "seconds": seconds,
            "concurrency": concurrency,
            "interval_s": interval,
            "idle_rss_mib": round(idle.rss_bytes / 2**20, 2),
            "start_rss_mib": start_rss,
            "end_rss_mib": end_rss,
            "peak_rss_mib": float(rss.max()),
            "growth_pct": round(growth, 2),
            "trend_mib_per_hour": round(slope, 2),
            "requests": sum(s["requests"] for s in samples),
            "errors": errors,
            "max_growth_pct": MAX_GROWTH_PCT,
            "ok": bool(growth < MAX_GROWTH_PCT and errors == 0),
        },
        "samples": samples,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"soak-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    shutil.copyfile(path, opts.out / "latest-soak.json")
    files = [str(path)]
    if opts.plots:
        try:
            files.append(str(_plot(doc, opts.out, stamp)))
        except ImportError as exc:  # matplotlib lives in the `train` extra
            log.warning("no plot: %s", exc)
    doc["files"] = files
    return doc


def _plot(doc: dict[str, Any], out: Path, stamp: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = doc["samples"]
    t = [s["t_s"] for s in samples]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [s["rss_mib"] for s in samples], "o-", label="RSS (MiB)")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("server RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot(t, [s["inferences_per_s"] for s in samples], "x:", color="gray", label="inferences/s")
    ax2.set_ylabel("inferences/s")
    s = doc["soak"]
    ax.set_title(
        f"soak: mlp c={s['concurrency']}, RSS {s['start_rss_mib']} -> {s['end_rss_mib']} MiB "
        f"({s['growth_pct']:+.2f}%)",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / f"soak-{stamp}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    shutil.copyfile(path, out / "latest-soak.png")
    return path


def summary(doc: dict[str, Any]) -> str:
    s = doc["soak"]
    verdict = "OK" if s["ok"] else "FAILED"
    return (
        f"soak {verdict}: mlp at concurrency {s['concurrency']} for {s['seconds']:.0f} s, "
        f"{s['requests']:,} requests, {s['errors']} errors; server RSS {s['start_rss_mib']} MiB "
        f"-> {s['end_rss_mib']} MiB ({s['growth_pct']:+.2f}%, limit {s['max_growth_pct']}%), "
        f"trend {s['trend_mib_per_hour']:+.1f} MiB/hour, idle before load {s['idle_rss_mib']} MiB\n"
        f"results: {', '.join(doc['files'])}"
    )
