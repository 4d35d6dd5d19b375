"""Results out, for every benchmark here: text or markdown tables, the targets a run is
checked against, JSON (timestamped and latest) and PNG plots."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from bench.peers import LABELS, SERVERS

# ---------------------------------------------------------------------- tables


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(header: list[str], rows: list[list[str]], markdown: bool = False, left: int = 2) -> str:
    """Aligned text (the first `left` columns left-aligned), or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows)])


def cells(p: dict[str, Any], columns: list[tuple[str, int]]) -> list[str]:
    """A point's fields as table cells: (key, digits) per column."""
    return [fmt(p.get(key), digits) for key, digits in columns]


def write_json(doc: dict[str, Any], out_dir: Path, name: str, latest: str) -> Path:
    """out_dir/<name>.json, copied to out_dir/<latest>.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")
    shutil.copyfile(path, out_dir / f"{latest}.json")
    return path


def _machine_line(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    return (f"{m.get('cpus')} CPUs ({m.get('cpu_model')}), load average "
            f"{m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end")  # fmt: skip


# ---------------------------------------------------------------------- targets

# The 2-core reference machine, load generator on the same machine (docs/benchmarks.md).
C1_P50_MS = {"mlp": 0.6}
C32_INFERENCES_PER_S = {"mlp": 5000, "cnn": 5000, "lstm": 4000, "transformer": 4000}
C32_P99_MS = 15.0
DOMAIN_VS_V2 = 0.85  # domain API throughput at least 85% of v2's at the same point


def targets(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per target this run has points for: what was asked, got, and ok.
    Informational: a miss is reported, not raised."""
    by_key = {(p["model"], p["api"], p["concurrency"]): p for p in points}
    checks: list[dict[str, Any]] = []

    def add(name: str, got: float, want: str, ok: bool) -> None:
        checks.append({"target": name, "got": round(got, 3), "want": want, "ok": bool(ok)})

    for (model, api, conc), p in sorted(by_key.items()):
        name, ips, p99 = f"{model} {api} c{conc}", p["inferences_per_s"], p["p99_ms"]
        if conc == 1 and model in C1_P50_MS:
            limit = C1_P50_MS[model]
            add(f"{name} p50 ms", p["p50_ms"], f"<= {limit}", p["p50_ms"] <= limit)
        if conc == 32 and model in C32_INFERENCES_PER_S:
            least = C32_INFERENCES_PER_S[model]
            add(f"{name} inferences/s", ips, f">= {least}", ips >= least)
            add(f"{name} p99 ms", p99, f"<= {C32_P99_MS}", p99 <= C32_P99_MS)
            add(f"{name} errors", p["error_count"], "== 0", p["error_count"] == 0)
        if api == "domain" and (model, "v2", conc) in by_key:
            v2 = by_key[(model, "v2", conc)]["inferences_per_s"]
            ratio = ips / v2 if v2 else 0.0
            add(f"{model} domain/v2 c{conc} throughput", ratio, f">= {DOMAIN_VS_V2}",
                ratio >= DOMAIN_VS_V2)  # fmt: skip
    return checks


# ---------------------------------------------------------------------- python -m bench

RUN_HEADER = ["model", "path", "conc", "infer/s", "p50 ms", "p90 ms", "p99 ms", "errors",
              "srv cores", "cli cores", "other", "batch"]  # fmt: skip
LATENCY = [("inferences_per_s", 0), ("p50_ms", 3), ("p90_ms", 3), ("p99_ms", 3)]


def run_table(doc: dict[str, Any]) -> str:
    """Per model the floor rows, then each API x concurrency; perf_analyzer apart."""
    rows: list[list[str]] = []
    models = dict.fromkeys([f["model"] for f in doc["floor"]] + [p["model"] for p in doc["points"]])
    for model in models:
        for f in (f for f in doc["floor"] if f["model"] == model):
            rows.append([model, f"in-process b{f['batch']}", "-", *cells(f, LATENCY),
                         "-", "-", "-", "-", str(f["batch"])])  # fmt: skip
        for p in (p for p in doc["points"] if p["model"] == model):
            errors = ",".join(f"{k}:{v}" for k, v in p["errors"].items()) or "0"
            rows.append([model, p["api"], str(p["concurrency"]), *cells(p, LATENCY), errors,
                         *cells(p, [("server_cores", 2), ("client_cores", 2),
                                    ("other_cores", 2), ("mean_batch_size", 1)])])  # fmt: skip
    parts = [table(RUN_HEADER, rows)] if rows else []
    pa = doc.get("perf_analyzer") or {}
    if pa.get("points"):
        parts.append("perf_analyzer (its own client: compare its numbers only with each other; "
                     "cli cores over its whole run)")  # fmt: skip
        pa_rows = [[p["model"], "perf_analyzer v2", str(p["concurrency"]),
                    *cells(p, [*LATENCY, ("client_cores", 2)])] for p in pa["points"]]  # fmt: skip
        parts.append(table([*RUN_HEADER[:7], "cli cores"], pa_rows))
    if pa.get("status", "ok") != "ok":
        parts.append(f"perf_analyzer: {pa['status']}")
    for when, mem in (doc.get("memory") or {}).items():
        per = ", ".join(f"{s} {m['rss_mib']} MiB" for s, m in mem["services"].items())
        total = mem["total"]
        parts.append(f"server memory {when.replace('_', ' ')}: RSS {total['rss_mib']} MiB "
                     f"(PSS {total['pss_mib']} MiB; {per})")  # fmt: skip
    checks = doc.get("targets") or []
    if checks:
        missed = [c for c in checks if not c["ok"]]
        parts.append(f"targets: {len(checks) - len(missed)}/{len(checks)} met")
        parts.extend(f"  MISSED {c['target']}: {c['got']} (want {c['want']})" for c in missed)
    parts.append(f"{_machine_line(doc)}; 'other' = cores busy outside server and load generator")
    return "\n".join(parts)


# ---------------------------------------------------------------------- python -m bench.peers

CLIENTS = {"bench": "unary", "bench-stream": "streams", "perf_analyzer": "perf_analyzer unary",
           "perf_analyzer-stream": "perf_analyzer streams"}  # fmt: skip
FIGURES = (("infer/s", "inferences_per_s", 0), ("p50 ms", "p50_ms", 3),
           ("srv us/req", "server_cpu_us_per_request", 0))  # fmt: skip


def peers_table(
    doc: dict[str, Any], markdown: bool = False, images: dict[str, str] | None = None
) -> str:
    """Per model: one column per server; per client and concurrency, rows of throughput,
    p50 and server CPU per request (medians of rounds). A cell says `unavailable` (the
    server could not run), `n/a` (it cannot serve this client) or `failed`; why is said
    under the table. `markdown`: a section per model (with its plot from `images`, model ->
    path) and the notes as a list."""
    status: dict[str, str] = doc.get("status", {})
    servers = [s for s in SERVERS if s in doc["options"]["servers"]]
    key = {(p["client"], p["server"], p["model"], p["concurrency"]): p for p in doc["points"]}
    not_applicable: dict[str, dict[str, str]] = doc.get("not_applicable", {})
    clients = [c for c in CLIENTS if any(p["client"] == c for p in doc["points"])] or ["bench"]
    parts: list[str] = []
    failures: list[str] = []
    for model in doc["options"]["models"]:
        rows: list[list[str]] = []
        for client in clients:
            for conc in doc["options"]["concurrency"]:
                for i, (label, field, digits) in enumerate(FIGURES):
                    row = [CLIENTS[client] if i == 0 else "", str(conc) if i == 0 else "", label]
                    for s in servers:
                        p = key.get((client, s, model, conc))
                        if status.get(s, "ok") != "ok":
                            row.append("unavailable")
                        elif client in not_applicable.get(s, {}):
                            row.append("n/a")
                        elif p is None or "error" in p:
                            row.append("-" if p is None else "failed")
                            if p is not None and i == 0:
                                failures.append(f"{CLIENTS[client]} x {LABELS[s]} c={conc}: "
                                                f"{p['error']}")  # fmt: skip
                        else:
                            row.append(fmt(p.get(field), digits))
                    rows.append(row)
        what = (f"KServe v2 batch 1 (unary: ModelInfer; streams: ModelStreamInfer), medians "
                f"of {doc['options']['rounds']} rounds")  # fmt: skip
        header = ["client", "conc", "figure", *(LABELS[s] for s in servers)]
        if not markdown:
            parts.extend([f"{model}: {what}", table(header, rows, left=3)])
            continue
        parts += [f"## {model}", "", f"{what}.", "", table(header, rows, markdown=True), ""]
        if images and model in images:
            parts += [f"![{model}: throughput, p50 and server CPU per request vs concurrency, "
                      f"per server and client]({images[model]})", ""]  # fmt: skip
    notes: list[str] = []
    notes.extend(f"{LABELS[s]}: {status[s]}" for s in servers if status.get(s, "ok") != "ok")
    for s, why in not_applicable.items():
        notes.extend(
            f"n/a: {CLIENTS[c]} x {LABELS[s]}: {r}" for c, r in why.items() if c in clients
        )
    notes.extend(f"failed: {f}" for f in failures)
    for crash in doc.get("crashes", []):
        log = Path(crash["log"]).name if markdown else crash["log"]  # no temporary paths
        reason = crash.get("signal") or "see " + log
        notes.append(f"{LABELS[crash['server']]} exited (code {crash['exit_code']}) during the "
                     f"run and was restarted: {reason}")  # fmt: skip
    pin = doc.get("pinning")
    where = "not pinned: client and servers share every CPU"
    if pin:
        where = (
            f"pinned: client side on CPU {pin['client_cpus']}, servers on CPU {pin['server_cpus']}"
        )
    notes.append(f"{where}; {_machine_line(doc)}")
    notes.append("srv us/req: server CPU per request answered in the window (perf_analyzer: "
                 "over its whole run / its stable throughput)")  # fmt: skip
    if markdown:
        notes = [f"- {' '.join(n.splitlines())}" for n in notes]
        return "\n".join([*parts, "## Notes", "", *notes])
    return "\n".join(parts + notes)


def peers_page(doc: dict[str, Any], command: str, images: dict[str, str] | None = None) -> str:
    """The results page (docs/benchmark-results.md): what was run, when, where and on which
    commit, then the markdown tables; `images`: model -> plot path relative to the page."""
    m = doc.get("machine", {})
    commit = m.get("git_commit") or "unknown"
    if m.get("services_commit"):
        commit += f" (last change to services/: {m['services_commit']})"
    if m.get("services_uncommitted"):
        commit += ", with uncommitted changes to services/"
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "grpcio", "onnxruntime") if m.get(k))
    fronts = ", ".join(f"{LABELS[s]}: {f}" for s, f in doc.get("front_ends", {}).items())
    machine = f"{m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs" + (versions and "; ")
    rows = [
        ["date", f"{doc.get('started_at', '?')} to {doc.get('finished_at', '?')} (UTC)"],
        ["machine", machine + versions],
        ["commit", commit],
        ["command", f"`{command}`"],
        ["perf_analyzer", doc.get("perf_analyzer_version") or doc.get("perf_analyzer_status")
         or "not run"],
    ]  # fmt: skip
    if fronts:
        rows.append(["front ends (as each nnserve server reported)", fronts])
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench-results` (`python -m bench.peers ... --page "
        "docs/benchmark-results.md`); rerun it rather than edit this page. What each figure "
        "measures and how to read the tables: [benchmarks.md](benchmarks.md).",
        "",
        table(["run", ""], rows, markdown=True),
        "",
        peers_table(doc, markdown=True, images=images),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- plots

Line = tuple[str, list[float], list[float], str]  # label, x, y, matplotlib format


def _line(label: str, points: list[dict[str, Any]], field: str, style: str) -> Line:
    pts = sorted((p for p in points if p.get(field) is not None), key=lambda p: p["concurrency"])
    return label, [p["concurrency"] for p in pts], [p[field] for p in pts], style


def plot(path: Path, panels: list[tuple[str, str, list[Line]]], title: str, log_y: bool = True,
         xlabel: str = "concurrency (requests in flight)") -> Path:  # fmt: skip
    """One figure of panels (title, y label, lines) side by side; x on a log2 axis when
    it is concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (panel_title, ylabel, lines) in zip(axes[0], panels, strict=True):
        for label, xs, ys, style in (line for line in lines if line[1]):
            ax.plot(xs, ys, style, label=label)
        if xlabel.startswith("concurrency"):
            ticks = sorted({x for _, xs, _, _ in lines for x in xs})
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        if log_y and any(y > 0 for _, _, ys, _ in lines for y in ys):
            ax.set_yscale("log")
        ax.set(title=panel_title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_plots(doc: dict[str, Any], out: Path, stamp: str) -> list[Path]:
    """Throughput and p99 vs concurrency, one panel per model: served APIs vs the floor."""
    written = []
    for metric, label, name in (("inferences_per_s", "inferences/s", "throughput"),
                                ("p99_ms", "p99 latency (ms)", "p99")):  # fmt: skip
        panels = []
        for model in dict.fromkeys(p["model"] for p in doc["points"]):
            mine = [p for p in doc["points"] if p["model"] == model]
            conc = sorted({p["concurrency"] for p in mine})
            lines = [_line(f"served {api}", [p for p in mine if p["api"] == api], metric, "o-")
                     for api in dict.fromkeys(p["api"] for p in mine)]  # fmt: skip
            lines += [(f"in-process b{f['batch']}", [conc[0], conc[-1]], [f[metric]] * 2, "--")
                      for f in doc["floor"] if f["model"] == model]  # fmt: skip
            panels.append((model, label, lines))
        if panels:
            title = f"nnserve {label} vs concurrency ({doc['machine'].get('cpus')} CPUs)"
            written.append(plot(out / f"{stamp}-{name}.png", panels, title))
            shutil.copyfile(written[-1], out / f"latest-{name}.png")
    return written


def peers_plots(doc: dict[str, Any], out: Path, stamp: str) -> list[Path]:
    """Per model: throughput, p50 and server CPU per request vs concurrency; one colour
    per server, one line style per client."""
    styles = {"bench": "o-", "bench-stream": "^:", "perf_analyzer": "s--",
              "perf_analyzer-stream": "v-."}  # fmt: skip
    points = [p for p in doc["points"] if "error" not in p]
    servers = [s for s in SERVERS if s in doc["options"]["servers"]]
    written = []
    for model in doc["options"]["models"]:
        panels = []
        for label, field, _ in FIGURES:
            lines = [_line(f"{LABELS[s]}, {CLIENTS[c]}",
                           [p for p in points if (p["model"], p["server"], p["client"]) == key],
                           field, f"C{i}{style}")
                     for i, s in enumerate(servers) for c, style in styles.items()
                     for key in [(model, s, c)]]  # fmt: skip
            panels.append((label, label, lines))
        where = "pinned" if doc.get("pinning") else "unpinned"
        title = (f"{model}, KServe v2 batch 1: medians of {doc['options']['rounds']} rounds; "
                 f"{doc['machine'].get('cpus')} CPUs, {where}")  # fmt: skip
        written.append(plot(out / f"{stamp}-{model}.png", panels, title))
        shutil.copyfile(written[-1], out / f"peers-latest-{model}.png")
    return written


def soak_plot(doc: dict[str, Any], out: Path, stamp: str) -> Path:
    """RSS and throughput over the soak's windows."""
    samples, s = doc["samples"], doc["soak"]
    xs = [x["t_s"] for x in samples]
    panels = [("server RSS", "MiB", [("RSS", xs, [x["rss_mib"] for x in samples], "o-")]),
              ("throughput", "inferences/s",
               [("inferences/s", xs, [x["inferences_per_s"] for x in samples], "x:")])]  # fmt: skip
    title = (f"soak: mlp c={s['concurrency']}, RSS {s['start_rss_mib']} -> {s['end_rss_mib']} "
             f"MiB ({s['growth_pct']:+.2f}%)")  # fmt: skip
    path = plot(out / f"soak-{stamp}.png", panels, title, log_y=False, xlabel="seconds under load")
    shutil.copyfile(path, out / "latest-soak.png")
    return path
