"""The peers table (medians of rounds, ratios to nnserve and to the no-op floor), the
JSON document and one plot per model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from bench.peers import LABELS, SERVERS
from bench.report import _fmt, _rows_table

CLIENTS = {
    "bench": "bench (grpc.aio)",
    "perf_analyzer": "perf_analyzer",
    "bench-stream": "bench, streams",
    "perf_analyzer-stream": "perf_analyzer --streaming",
}
STYLES = {
    "bench": "o-",
    "perf_analyzer": "s--",
    "bench-stream": "^:",
    "perf_analyzer-stream": "v-.",
}
HEADER = ["client", "server", "conc", "infer/s", "p50 ms", "p99 ms", "srv cores",
          "cli cores", "srv us/req", "x nnserve infer/s", "x nnserve p50", "us/req / no-op",
          "rounds", "errors"]  # fmt: skip


def _ratio(a: Any, b: Any) -> str:
    if not a or not b or (isinstance(a, float) and math.isnan(a)):
        return "-"
    return f"{a / b:.2f}"


def _order(doc: dict[str, Any]) -> list[str]:
    wanted = doc["options"]["servers"]
    return [s for s in SERVERS if s in wanted]


def table(doc: dict[str, Any]) -> str:
    """One block per model: each client, concurrency and server; a server that could not
    run appears once per client as 'unavailable', with the reason under the table."""
    status: dict[str, str] = doc.get("status", {})
    points = doc.get("points", [])
    key = {(p["client"], p["server"], p["model"], p["concurrency"]): p for p in points}
    models = list(dict.fromkeys(doc["options"]["models"]))
    concurrency = doc["options"]["concurrency"]
    clients = [c for c in CLIENTS if any(p["client"] == c for p in points)] or ["bench"]
    parts = []
    failures: list[str] = []
    for model in models:
        rows: list[list[str]] = []
        for client in clients:
            pa = client.startswith("perf_analyzer")
            cannot = doc.get("perf_analyzer_cannot_drive", {}) if pa else {}
            for name in _order(doc):
                if status.get(name, "ok") != "ok" or name in cannot:
                    rows.append([CLIENTS[client], LABELS[name], "-", "unavailable",
                                 *["-"] * (len(HEADER) - 4)])  # fmt: skip
            for conc in concurrency:
                ours = key.get((client, "nnserve", model, conc), {})
                floor = key.get((client, "noop", model, conc), {})
                for name in _order(doc):
                    p = key.get((client, name, model, conc))
                    if p is None:
                        continue
                    if "error" in p:
                        rows.append([CLIENTS[client], LABELS[name], str(conc), "failed",
                                     *["-"] * (len(HEADER) - 4)])  # fmt: skip
                        failures.append(f"{CLIENTS[client]} x {LABELS[name]} c={conc}: "
                                        f"{p['error']}")  # fmt: skip
                        continue
                    rows.append(
                        [
                            CLIENTS[client],
                            LABELS[name],
                            str(conc),
                            _fmt(p["inferences_per_s"], 0),
                            _fmt(p["p50_ms"], 3),
                            _fmt(p["p99_ms"], 3),
                            _fmt(p.get("server_cores")),
                            _fmt(p.get("client_cores")),
                            _fmt(p.get("server_us_per_request"), 0),
                            _ratio(p["inferences_per_s"], ours.get("inferences_per_s")),
                            _ratio(p["p50_ms"], ours.get("p50_ms")),
                            _ratio(
                                p.get("server_us_per_request"), floor.get("server_us_per_request")
                            ),
                            str(p.get("rounds", "-")),
                            str(p.get("error_count", "-")),
                        ]
                    )
        parts.append(f"{model}: KServe v2 batch 1 (ModelInfer; streams: ModelStreamInfer), "
                     "medians of rounds")  # fmt: skip
        parts.append(_rows_table(HEADER, rows))
    for name in _order(doc):
        if status.get(name, "ok") != "ok":
            parts.append(f"{LABELS[name]}: {status[name]}")
    for name, why in doc.get("perf_analyzer_cannot_drive", {}).items():
        parts.append(f"perf_analyzer x {LABELS[name]}: unavailable: {why}")
    parts.extend(f"failed: {f}" for f in failures)
    for crash in doc.get("crashes", []):
        signal_line = crash.get("signal", "")
        parts.append(f"{LABELS[crash['server']]} exited (code {crash['exit_code']}) during the "
                     f"run and was restarted: {signal_line or 'see ' + crash['log']}")  # fmt: skip
    if doc.get("perf_analyzer_status"):
        parts.append(f"perf_analyzer: {doc['perf_analyzer_status']}")
    pinning = doc.get("pinning")
    machine = doc.get("machine", {})
    parts.append(
        (
            f"pinned: client side on CPU {pinning['client_cpus']}, servers on CPU "
            f"{pinning['server_cpus']}"
            if pinning
            else "not pinned: client and servers share every CPU"
        )
        + f"; {machine.get('cpus')} CPUs ({machine.get('cpu_model')}), load average "
        f"{machine.get('loadavg_start')} at start, {machine.get('loadavg_end')} at end"
    )
    parts.append(
        "x nnserve: this server's value / nnserve's at the same point (same client); "
        "us/req / no-op: server CPU per request / the no-op grpc.aio servicer's. "
        "perf_analyzer srv us/req: server CPU over its whole run / its stable throughput"
    )
    return "\n".join(parts)


def write_json(doc: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")
    shutil.copyfile(path, out_dir / "peers-latest.json")
    return path


def plot(doc: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    """Per model: throughput, p50 and server CPU per request vs concurrency; one colour
    per server, one line style per client (unary and streams, bench and perf_analyzer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in doc.get("points", []) if "error" not in p]
    written = []
    for model in dict.fromkeys(doc["options"]["models"]):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        panels = (
            ("inferences_per_s", "inferences/s"),
            ("p50_ms", "p50 latency (ms)"),
            ("server_us_per_request", "server CPU per request (µs)"),
        )
        for ax, (metric, label) in zip(axes, panels, strict=True):
            for i, name in enumerate(_order(doc)):
                for client, style in STYLES.items():
                    pts = sorted(
                        (p for p in points if p["model"] == model and p["server"] == name
                         and p["client"] == client and p.get(metric) is not None),
                        key=lambda p: p["concurrency"],
                    )  # fmt: skip
                    if pts:
                        ax.plot([p["concurrency"] for p in pts], [p[metric] for p in pts],
                                style, color=f"C{i}",
                                label=f"{LABELS[name]}, {CLIENTS[client]}")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xticks(
                doc["options"]["concurrency"], [str(c) for c in doc["options"]["concurrency"]]
            )
            ax.set_yscale("log")
            ax.set_xlabel("concurrency (requests in flight)")
            ax.set_title(label, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[1].legend(fontsize=7, loc="upper left")  # the emptiest corner
        pinning = doc.get("pinning")
        where = (
            f"client on CPU {pinning['client_cpus']}, servers on CPU {pinning['server_cpus']}"
            if pinning
            else "unpinned"
        )
        fig.suptitle(
            f"{model}, KServe v2 batch 1 (unary and streams): medians of "
            f"{doc['options']['rounds']} rounds; {doc['machine'].get('cpus')} CPUs, {where}",
            fontsize=10,
        )
        fig.tight_layout()
        path = out_dir / f"{stamp}-{model}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        shutil.copyfile(path, out_dir / f"peers-latest-{model}.png")
        written.append(path)
    return written
