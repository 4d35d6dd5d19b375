"""Results out: one text table, JSON (timestamped + latest.json) and PNG plots."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(
        h.rjust(w) if i > 1 else h.ljust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                c.rjust(w) if i > 1 else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def table(doc: dict[str, Any]) -> str:
    """The run as one table: per model the floor rows, then each API x concurrency."""
    header = [
        "model",
        "path",
        "conc",
        "infer/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "srv cores",
        "cli cores",
        "other",
        "batch",
    ]
    rows: list[list[str]] = []
    models = list(
        dict.fromkeys([p["model"] for p in doc["points"]] + [f["model"] for f in doc["floor"]])
    )
    for model in models:
        for f in (f for f in doc["floor"] if f["model"] == model):
            rows.append(
                [
                    model,
                    f"in-process b{f['batch']}",
                    "-",
                    _fmt(f["inferences_per_s"], 0),
                    _fmt(f["p50_ms"], 3),
                    "-",
                    _fmt(f["p99_ms"], 3),
                    "-",
                    "-",
                    "-",
                    "-",
                    str(f["batch"]),
                ]
            )
        for p in (p for p in doc["points"] if p["model"] == model):
            errors = (
                str(p["error_count"])
                if not p["errors"]
                else ",".join(f"{k}:{v}" for k, v in p["errors"].items())
            )
            rows.append(
                [
                    model,
                    p["api"],
                    str(p["concurrency"]),
                    _fmt(p["inferences_per_s"], 0),
                    _fmt(p["p50_ms"], 3),
                    _fmt(p["p90_ms"], 3),
                    _fmt(p["p99_ms"], 3),
                    errors,
                    _fmt(p.get("server_cores")),
                    _fmt(p.get("client_cores")),
                    _fmt(p.get("other_cores")),
                    _fmt(p.get("mean_batch_size"), 1),
                ]
            )
    parts = [_rows_table(header, rows)]
    pa = doc.get("perf_analyzer") or {}
    if pa.get("points"):
        pa_rows = [
            [
                p["model"],
                "perf_analyzer v2",
                str(p["concurrency"]),
                _fmt(p["inferences_per_s"], 0),
                _fmt(p["p50_ms"], 3),
                _fmt(p["p90_ms"], 3),
                _fmt(p["p99_ms"], 3),
                "-",
                "-",
                _fmt(p.get("client_cores")),
            ]
            for p in pa["points"]
        ]
        parts.append(
            "perf_analyzer (separate tool: compare its numbers only with each other; "
            "cli cores over its whole run)"
        )
        parts.append(_rows_table(header[:10], pa_rows))
    if pa.get("status") and pa["status"] != "ok":
        failed = sorted({e["model"] for e in pa.get("errors", [])})
        reason = pa["errors"][0]["error"] if pa.get("errors") else ""
        parts.append(
            f"perf_analyzer: {pa['status']}"
            + (f" ({', '.join(failed)}: {reason})" if failed else "")
        )
    memory = doc.get("memory") or {}
    for when in ("after_load", "after_run"):
        if memory.get(when):
            total = memory[when]["total"]
            per = ", ".join(f"{s} {m['rss_mib']} MiB" for s, m in memory[when]["services"].items())
            parts.append(
                f"server memory {when.replace('_', ' ')}: RSS {total['rss_mib']} MiB "
                f"(PSS {total['pss_mib']} MiB; {per})"
            )
    checks = doc.get("targets") or []
    if checks:
        missed = [c for c in checks if not c["ok"]]
        parts.append(f"targets: {len(checks) - len(missed)}/{len(checks)} met")
        parts.extend(f"  MISSED {c['target']}: {c['got']} (want {c['want']})" for c in missed)
    ctx = doc.get("machine", {})
    parts.append(
        f"machine: {ctx.get('cpus')} CPUs ({ctx.get('cpu_model')}), load average "
        f"{ctx.get('loadavg_start')} at start, {ctx.get('loadavg_end')} at end; 'other' = "
        "cores busy outside server and load generator during the point"
    )
    return "\n".join(parts)


def write_json(doc: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, allow_nan=True) + "\n")
    shutil.copyfile(path, out_dir / "latest.json")
    return path


def plot(doc: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    """Throughput and p99 vs concurrency, one panel per model: served APIs vs the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p["model"] for p in doc["points"]))
    if not models:
        return []
    written = []
    for metric, label, floor_key in (
        ("inferences_per_s", "inferences/s", "inferences_per_s"),
        ("p99_ms", "p99 latency (ms)", "p99_ms"),
    ):
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            for api in dict.fromkeys(p["api"] for p in doc["points"]):
                pts = sorted(
                    (p for p in doc["points"] if p["model"] == model and p["api"] == api),
                    key=lambda p: p["concurrency"],
                )
                if pts:
                    ax.plot(
                        [p["concurrency"] for p in pts],
                        [p[metric] for p in pts],
                        "o-",
                        label=f"served {api}",
                    )
            for f in (f for f in doc["floor"] if f["model"] == model):
                ax.axhline(
                    f[floor_key],
                    linestyle="--",
                    linewidth=1,
                    color="gray" if f["batch"] == 1 else "black",
                    label=f"in-process b{f['batch']}",
                )
            ax.set_xscale("log", base=2)
            values = [v for line in ax.get_lines() for v in line.get_ydata() if v == v and v > 0]
            if values:  # the floor is orders of magnitude above the served path
                ax.set_yscale("log")
            ax.set_title(model)
            ax.set_xlabel("concurrency (requests in flight)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"nnserve {label} vs concurrency ({doc['machine'].get('cpus')} CPUs)", fontsize=10
        )
        fig.tight_layout()
        name = "throughput" if metric == "inferences_per_s" else "p99"
        path = out_dir / f"{stamp}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        shutil.copyfile(path, out_dir / f"latest-{name}.png")
        written.append(path)
    return written
