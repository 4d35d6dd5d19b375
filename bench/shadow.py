"""python -m bench.shadow: what a shadow version costs the requests it mirrors.

Two classify servers on one model repository holding the model twice (version 1, and
version 2 as an identical copy: the shadow then does exactly the serving version's work,
the most it can cost): one without a shadow, one with NNSERVE_SHADOWS={model: 2}. The
same closed-loop client (KServe v2 ModelInfer, batch 1) measures both, interleaved round
by round (off, on, off, on, ...), at each concurrency; the table gives the medians over
the rounds of throughput, p50, p99 and server CPU per request, and what became of the
shadow copies (compared or dropped) during the measured windows.

    python -m bench.shadow --repository model_repository --concurrency 1,32 --rounds 3

As `make bench-peers`, the client side runs on the first CPU and the servers on the
others (--no-pin: all share every CPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import harness, report
from bench.harness import (
    Server,
    measure_point,
    median_of,
    metric_samples,
    start_service,
    wait_ready,
)
from bench.loadgen import LoadGenerator
from bench.workload import build_workload, from_repository, sample_rows
from contract.model import scan

log = logging.getLogger("bench.shadow")

MODES = ("off", "on")


def two_versions(repository: Path, model: str, into: Path) -> Path:
    """A repository with `model`'s highest version as versions 1 and 2."""
    version = scan(repository)[model][-1]
    for target in ("1", "2"):
        folder = into / model / target
        shutil.copytree(repository / model / str(version), folder)
        doc = json.loads((folder / "model.json").read_text())
        doc["version"] = int(target)
        (folder / "model.json").write_text(json.dumps(doc))
    return into


def shadow_outcomes(server: Server, model: str) -> dict[str, float]:
    """nnserve_shadow_requests_total of the model by outcome."""
    out: dict[str, float] = {}
    for name, labels, value in metric_samples(server.scrape()):
        if name == "nnserve_shadow_requests_total" and labels.get("model") == model:
            out[labels["outcome"]] = out.get(labels["outcome"], 0.0) + value
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="nnserve-bench-shadow-"))
    repository = two_versions(args.repository, args.model, work / "repository")
    info = from_repository(repository, args.model)
    workload = build_workload(info, "v2", sample_rows(info, 16))
    shadows = json.dumps({args.model: 2})
    servers: dict[str, Server] = {}
    split = harness.cpu_split() if args.pin else None
    if split:  # this process first: the load process inherits it
        harness.pin([os.getpid()], split[0])
    gen = LoadGenerator(1)
    points: list[dict[str, Any]] = []
    try:
        for mode in MODES:
            extra = ["--version-policy", "all", "--http-port", "-1"]
            if mode == "on":
                extra += ["--shadows", shadows]
            servers[mode] = start_service(
                "classify", repository, work / "logs", [args.model],
                label=f"shadow-{mode}", extra_args=extra,
            )  # fmt: skip
        for server in servers.values():
            wait_ready(server)
            if split:
                harness.pin(server.pids(), split[1])
        for rnd in range(args.rounds):
            for concurrency in args.concurrency:
                for mode in MODES:
                    server = servers[mode]
                    before = shadow_outcomes(server, args.model)
                    p = measure_point(
                        gen, server.address, workload, concurrency, server=server,
                        warmup_s=args.warmup, duration_s=args.duration,
                    )  # fmt: skip
                    after = shadow_outcomes(server, args.model)
                    for outcome in ("compared", "dropped", "failed"):
                        p[f"shadow_{outcome}"] = int(after.get(outcome, 0) - before.get(outcome, 0))
                    p.update(mode=mode, concurrency=concurrency, round=rnd)
                    points.append(p)
                    log.info(
                        "round %d c=%-3d shadow %-3s %8.0f inf/s  p50 %.3f ms  p99 %.3f ms  "
                        "compared %d dropped %d",
                        rnd, concurrency, mode, p["inferences_per_s"], p["p50_ms"],
                        p["p99_ms"], p["shadow_compared"], p["shadow_dropped"],
                    )  # fmt: skip
    finally:
        gen.close()
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "schema": 1,
        "kind": "shadow",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": harness.machine_context(),
        "pinning": split and {"client_cpus": sorted(split[0]), "server_cpus": sorted(split[1])},
        "model": args.model,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "summary": summarize(points, args.concurrency),
        "points": points,
    }


def summarize(points: list[dict[str, Any]], concurrency: list[int]) -> list[dict[str, Any]]:
    """Per concurrency and mode: the harness's medians over the rounds (errors summed),
    and the shadow copies compared and dropped, summed."""
    rows = []
    for c in concurrency:
        for mode in MODES:
            ps = [p for p in points if p["concurrency"] == c and p["mode"] == mode]
            row: dict[str, Any] = {"concurrency": c, "mode": mode, **median_of(ps)}
            for key in ("shadow_compared", "shadow_dropped"):
                row[key] = sum(p[key] for p in ps)
            rows.append(row)
    return rows


def table(doc: dict[str, Any]) -> str:
    header = ["c", "shadow", "inf/s", "p50 ms", "p99 ms", "server us/req", "compared",
              "dropped", "errors"]  # fmt: skip
    columns = [("inferences_per_s", 0), ("p50_ms", 3), ("p99_ms", 3),
               ("server_cpu_us_per_request", 1), ("shadow_compared", 0),
               ("shadow_dropped", 0), ("error_count", 0)]  # fmt: skip
    rows = [[str(r["concurrency"]), r["mode"], *report.cells(r, columns)] for r in doc["summary"]]
    pinning = doc.get("pinning")
    where = (
        f"client on CPU {pinning['client_cpus']}, servers on {pinning['server_cpus']}"
        if pinning
        else "not pinned"
    )
    title = (
        f"{doc['model']}, KServe v2 ModelInfer batch 1, medians of {doc['rounds']} rounds "
        f"x {doc['duration_s']:g} s ({where}); shadow on: an identical copy as the shadow "
        "version"
    )
    return title + "\n" + report.table(header, rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__.split("\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="mlp")
    p.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")],
                   default=[1, 32])  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each point")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="share every CPU (default: the client on the first, servers on the rest)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    doc = run(args)
    stamp = doc["started_at"].replace(":", "").replace("-", "")
    path = report.write_json(doc, args.out, f"shadow-{stamp}", "latest-shadow")
    print(table(doc))
    print(f"results: {path}")
    errors = sum(r.get("error_count", 0) + ("error" in r) for r in doc["summary"])
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
