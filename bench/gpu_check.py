"""GPU check: are the services really on CUDA, right, and fast? One command, one summary.

    make gpu-check                                    # fails at once without an NVIDIA GPU
    timeout 900 python -m bench.gpu_check --repository model_repository
    python -m bench.gpu_check --preflight             # the environment checks alone
    python -m bench.gpu_check --allow-cpu --quick     # the CPU-only paths, anywhere

On a machine with an NVIDIA GPU and onnxruntime-gpu (unpacked outside the environment:
on PYTHONPATH first), in a few minutes:
  1. environment: onnxruntime offers CUDAExecutionProvider and the CUDA driver reports a
     GPU (else it stops here, in about a second, exit 1); nvidia-smi; the modules the
     services import; then the CUDA libraries are preloaded (`import torch`, else
     onnxruntime.preload_dlls()) before any session exists;
  2. every model opens in-process on CUDA (policy require_gpu) and passes its goldens;
  3. the `measure` policy (as the services open it) times CPU and CUDA per batch size
     and routes each size; every size it sends to the GPU is timed again on both, over
     every batch size the batcher may form: the GPU must not be slower there;
  4. both services start with the default policy; for every model DescribeModel.provider,
     ModelConfig's execution_provider and nnserve_model_info say CUDAExecutionProvider
     and no fallback is reported; served outputs (KServe v2, batch 1 and 64) equal
     in-process CPU ONNX Runtime within the model.json tolerances; latency at batch 1
     and 64, served and in-process;
  5. served throughput of the mlp and the transformer (batch 1 per request, closed loop,
     many concurrent clients) with --workers service workers and --clients load
     processes (default: half the cores each), policy `measure`: inferences/s, p50/p99,
     batches per provider. Target: mlp >= 50,000 inferences/s at p99 <= 10 ms.
A table is printed and written as markdown ready for docs/benchmarks.md, beside the JSON
report. Exit status 0 when every check passes (targets included), 1 otherwise.
With --allow-cpu the same checks expect CPUExecutionProvider where onnxruntime has no
CUDA provider, and the throughput target is reported, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TARGET_INFERENCES_PER_S = 50_000
TARGET_P99_MS = 10.0
# Timing noise allowed before "the GPU is slower" fails (medians of short runs).
SLOWER_SLACK = 1.10
SERVICE_MODULES = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "pydantic_settings",
    "prometheus_client",
    "numpy",
    "onnxruntime",
)
THROUGHPUT_MODELS = ("mlp", "transformer")


class Report:
    """Checks as they happen (PASS / FAIL / INFO lines) and everything measured."""

    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}
        self.markdown: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        log.info("%s %s%s", "PASS" if ok else "FAIL", name, f": {detail}" if detail else "")
        return ok

    def info(self, name: str, detail: str) -> None:
        self.checks.append({"check": name, "ok": None, "detail": detail})
        log.info("INFO %s: %s", name, detail)

    def table(self, title: str, header: list[str], rows: list[list[Any]]) -> None:
        """A markdown table for docs/benchmarks.md (printed at the end too)."""
        self.markdown += [f"**{title}**", "", "| " + " | ".join(header) + " |"]
        self.markdown.append("|" + "---|" * len(header))
        self.markdown += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.markdown.append("")

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["ok"] is False]


# ---------------------------------------------------------------------- environment


def preload_cuda() -> str:
    """Make CUDA/cuDNN libraries findable before the first session (GPU README)."""
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch  # (loads the nvidia-* libraries it was built with)

            return f"torch {torch.__version__} imported"
        except Exception as exc:  # a broken torch must not stop the check
            log.warning("import torch failed: %s", exc)
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            return "onnxruntime.preload_dlls() called"
        except Exception as exc:
            return f"onnxruntime.preload_dlls() failed: {exc}"
    return "no preload available"


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "not found"
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "timed out after 30 s"
    return smi.stdout.strip() or smi.stderr.strip() or f"exit code {smi.returncode}"


def environment(report: Report, allow_cpu: bool) -> str:
    """Preflight, cheapest first so a machine without CUDA fails in about a second;
    returns the provider every model is expected to run on."""
    import onnxruntime as ort

    from services.core.runtime import cuda_device_count

    report.info("python", f"{sys.version.split()[0]} at {sys.executable}")
    providers = ort.get_available_providers()
    report.info(
        "onnxruntime", f"{ort.__version__} from {Path(ort.__file__).parent}; providers {providers}"
    )
    has_cuda = CUDA in providers
    if not allow_cpu and not report.check(
        "onnxruntime offers CUDAExecutionProvider",
        has_cuda,
        ""
        if has_cuda
        else "this is the CPU build: install onnxruntime-gpu (make venv ORT=gpu), "
        "or pass --allow-cpu to check the CPU paths",
    ):
        return CPU
    smi = nvidia_smi()
    report.data["gpu"] = smi
    report.info("nvidia-smi", smi)
    gpus = cuda_device_count() if has_cuda else 0
    if not allow_cpu and not report.check(
        "the CUDA driver reports a GPU",
        gpus > 0,
        f"{gpus} device(s)" if gpus else "no GPU visible (driver, CUDA_VISIBLE_DEVICES?)",
    ):
        return CPU
    missing = [m for m in SERVICE_MODULES if importlib.util.find_spec(m) is None]
    report.check(
        "service dependencies importable",
        not missing,
        f"missing {missing}" if missing else "all present",
    )
    if has_cuda:
        report.info("preload", preload_cuda())
    return CUDA if has_cuda and gpus > 0 else CPU


# ---------------------------------------------------------------------- in-process


def open_in_process(
    report: Report, infos: dict[str, Any], expected: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """CPU sessions (the reference) and, on a GPU, require_gpu sessions that must pass
    their goldens on CUDA."""
    from bench.floor import open_model
    from contract.model import ModelLoadError
    from services.core.runtime import check_goldens

    cpu = {m: open_model(i, "cpu_only") for m, i in infos.items()}
    cuda: dict[str, Any] = {}
    for m, i in infos.items():
        spec = i.spec
        assert spec is not None, "the GPU check reads the model repository"
        policy = "require_gpu" if expected == CUDA else "cpu_only"
        try:
            session = open_model(i, policy)
            check_goldens(spec, session)
        except ModelLoadError as exc:
            report.check(f"{m} loads on {expected} and passes its goldens", False, str(exc))
            continue
        if report.check(
            f"{m} loads on {expected} and passes its goldens",
            session.provider == expected,
            f"{len(spec.goldens)} golden cases on {session.provider}",
        ):
            report.data.setdefault("goldens", {})[m] = f"{len(spec.goldens)} pass"
        if expected == CUDA:
            cuda[m] = session
    return cpu, cuda


def batcher_sizes(max_batch: int) -> list[int]:
    """Batch sizes to time: powers of two up to the model's max batch, and the max."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_batch})


def measured_placement(
    report: Report,
    infos: dict[str, Any],
    rows: dict[str, Any],
    cpu_sessions: dict[str, Any],
    seconds: float,
) -> list[dict[str, Any]]:
    """The measure policy as the services open it (sizes 1, 8, max), then every size it
    routes to CUDA timed again on both providers: the GPU must not be slower there."""
    from bench.floor import feeds_for, time_calls
    from services.core.runtime import open_session
    from services.settings import DevicePolicy, Settings

    settings = Settings()
    table: list[dict[str, Any]] = []
    for m, i in infos.items():
        spec = i.spec
        assert spec is not None, "the GPU check reads the model repository"
        max_batch = settings.serving_config(m, spec.serving).max_batch_size
        measured = open_session(
            spec, DevicePolicy.MEASURE, settings.intra_op_threads, (1, min(8, max_batch), max_batch)
        )
        slower: list[str] = []
        for n in batcher_sizes(max_batch):
            row: dict[str, Any] = {"model": m, "batch": n, "routed_to": measured.provider_for(n)}
            for provider, timings in measured.placement.items():
                if n in timings:
                    row[f"measured_{'cuda' if provider == CUDA else 'cpu'}_ms"] = round(
                        timings[n] * 1e3, 4
                    )
            if row["routed_to"] == CUDA:  # measured.run sends this size to its CUDA session
                feeds = feeds_for(rows[m], n)
                cuda_t = float(np.median(time_calls(measured, feeds, seconds, 20)))
                cpu_t = float(np.median(time_calls(cpu_sessions[m], feeds, seconds, 20)))
                row["recheck_cuda_ms"], row["recheck_cpu_ms"] = (
                    round(cuda_t * 1e3, 4),
                    round(cpu_t * 1e3, 4),
                )
                if cuda_t > cpu_t * SLOWER_SLACK:
                    slower.append(f"batch {n}: CUDA {cuda_t * 1e3:.3f} ms > CPU {cpu_t * 1e3:.3f}")
            table.append(row)
        on_gpu = [r["batch"] for r in table if r["model"] == m and r["routed_to"] == CUDA]
        report.check(
            f"{m} measure policy: GPU not slower than CPU where chosen",
            not slower,
            (f"CUDA from batch {min(on_gpu)}" if on_gpu else "every batch size on CPU")
            + (f"; slower: {slower}" if slower else "")
            + (f"; fallback {measured.fallback_reason.value}" if measured.fallback_reason else ""),
        )

    def ms(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "-"

    report.table(
        "`measure` policy: time per batch at load, route, and the re-check on GPU-routed sizes",
        ["model", "batch", "CPU ms", "CUDA ms", "routed to", "re-check CPU / CUDA ms"],
        [
            [
                r["model"],
                r["batch"],
                ms(r, "measured_cpu_ms"),
                ms(r, "measured_cuda_ms"),
                "CUDA" if r["routed_to"] == CUDA else "CPU",
                f"{ms(r, 'recheck_cpu_ms')} / {ms(r, 'recheck_cuda_ms')}"
                if "recheck_cpu_ms" in r
                else "-",
            ]
            for r in table
            if "measured_cpu_ms" in r or "recheck_cpu_ms" in r
        ],
    )
    return table


# ---------------------------------------------------------------------- served


def check_providers(report: Report, services: dict[str, Any], expected: str) -> None:
    """Provider in all three places; with CUDA expected, no fallback reported anywhere."""
    import grpc

    from bench.servers import metric_labels
    from protos import grpc_service_pb2 as pb
    from protos import grpc_service_pb2_grpc as pb_grpc
    from protos import nnserve_pb2 as npb
    from protos import nnserve_pb2_grpc as npb_grpc

    for service in services.values():
        text = service.scrape()
        info = metric_labels(text, "nnserve_model_info")
        fallbacks = metric_labels(text, "nnserve_provider_fallback")
        with grpc.insecure_channel(service.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            domain = npb_grpc.PredictorStub(channel)
            for model in service.models:
                described = domain.DescribeModel(
                    npb.DescribeModelRequest(model_name=model), timeout=10
                )
                config = v2.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10).config
                configured = config.parameters["execution_provider"].string_value
                fallback = config.parameters["execution_provider_fallback"].string_value
                metric = sorted({la.get("provider", "") for la in info if la.get("model") == model})
                fell = sorted({la["reason"] for la in fallbacks if la.get("model") == model})
                seen = {
                    "DescribeModel": described.provider,
                    "ModelConfig": configured,
                    "nnserve_model_info": ",".join(metric) or "(none)",
                }
                ok = all(v == expected for v in seen.values())
                report.data.setdefault("served", {})[model] = {
                    "provider": described.provider,
                    "fallback": fallback,
                }
                if expected == CUDA:
                    ok = ok and not fallback and not fell
                report.check(
                    f"{model} served on {expected}",
                    ok,
                    ", ".join(f"{k} {v}" for k, v in seen.items())
                    + f"; fallback: ModelConfig {fallback or '(none)'}, "
                    f"nnserve_provider_fallback {','.join(fell) or '(none)'}",
                )


def _infer(stub: Any, info: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from bench.workload import v2_request
    from contract.model import from_raw
    from protos import grpc_service_pb2 as pb

    raw = v2_request(info, feeds)
    response = pb.ModelInferResponse.FromString(stub(raw, timeout=30))
    return {
        o.name: from_raw(data, o.datatype, o.shape)
        for o, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def check_outputs(
    report: Report,
    address_of: dict[str, str],
    infos: dict[str, Any],
    rows: dict[str, Any],
    cpu_sessions: dict[str, Any],
    scale: float,
) -> dict[str, float]:
    """Served outputs vs in-process CPU ONNX Runtime, elementwise within model.json tolerances."""
    import grpc

    from bench.floor import feeds_for
    from bench.workload import V2_INFER
    from contract.model import worst as contract_worst

    worst_of: dict[str, float] = {}
    for name, info in infos.items():
        atol, rtol = info.spec.atol * scale, info.spec.rtol * scale
        session = cpu_sessions[name]
        worst = 0.0
        bad: list[str] = []
        with grpc.insecure_channel(address_of[name]) as channel:
            stub = channel.unary_unary(V2_INFER)
            cases = [
                (f"b1#{i}", feeds_for(rows[name][i:], 1)) for i in range(min(8, len(rows[name])))
            ]
            cases.append(("b64", feeds_for(rows[name], 64)))
            for label, feeds in cases:
                served = _infer(stub, info, feeds)
                expected = dict(zip(session.output_names, session.run(feeds), strict=True))
                for out, want in expected.items():
                    got = served[out].astype(np.float64)
                    ref = want.astype(np.float64)
                    if got.shape != ref.shape:
                        bad.append(f"{label} {out} shape {got.shape} != {ref.shape}")
                        continue
                    excess, _, _ = contract_worst(got, ref, atol, rtol)
                    worst = max(worst, float(np.abs(got - ref).max(initial=0.0)))
                    if excess > 0:
                        bad.append(f"{label} {out} off by {float(np.abs(got - ref).max()):.3g}")
        worst_of[name] = worst
        report.check(
            f"{name} outputs match in-process CPU",
            not bad,
            f"max |diff| {worst:.3g} (atol {atol:g}, rtol {rtol:g})"
            + (f"; {bad[:3]}" if bad else ""),
        )
    return worst_of


def correctness_table(report: Report, infos: dict[str, Any]) -> None:
    """Where each model runs and how right it is; first of the markdown tables."""
    served, goldens = report.data.get("served", {}), report.data.get("goldens", {})
    diffs = report.data.get("max_abs_diff", {})
    tables, report.markdown = report.markdown, []
    report.table(
        "Models: provider read back when served (default policy), goldens in-process, "
        "served outputs vs in-process CPU",
        ["model", "served on", "fallback", "goldens", "max abs diff vs CPU"],
        [
            [
                m,
                served.get(m, {}).get("provider", "-"),
                served.get(m, {}).get("fallback") or "none",
                goldens.get(m, "-"),
                f"{diffs[m]:.3g}" if m in diffs else "-",
            ]
            for m in infos
        ],
    )
    report.markdown += tables


def latency_table(
    report: Report,
    address_of: dict[str, str],
    infos: dict[str, Any],
    rows: dict[str, Any],
    cpu_sessions: dict[str, Any],
    cuda_sessions: dict[str, Any],
    seconds: float,
) -> list[dict[str, Any]]:
    import grpc

    from bench.floor import feeds_for, time_calls
    from bench.workload import V2_INFER, v2_request

    table = []
    for name, info in infos.items():
        with grpc.insecure_channel(address_of[name]) as channel:
            stub = channel.unary_unary(V2_INFER)
            for batch in (1, 64):
                feeds = feeds_for(rows[name], batch)
                raw = v2_request(info, feeds)
                for _ in range(20):
                    stub(raw, timeout=30)
                served: list[float] = []
                stop = time.perf_counter() + seconds
                while len(served) < 30 or time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    stub(raw, timeout=30)
                    served.append(time.perf_counter() - t0)
                row: dict[str, Any] = {"model": name, "batch": batch}
                row["served_p50_ms"], row["served_p99_ms"] = (
                    np.percentile(np.array(served) * 1e3, [50, 99]).round(3).tolist()
                )
                for label, sessions in (("cuda", cuda_sessions), ("cpu", cpu_sessions)):
                    if name in sessions:
                        t = time_calls(sessions[name], feeds, seconds / 2) * 1e3
                        row[f"{label}_p50_ms"], row[f"{label}_p99_ms"] = (
                            np.percentile(t, [50, 99]).round(4).tolist()
                        )
                table.append(row)

    def cell(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "-"

    report.table(
        "Latency, one client (served: default policy; in-process: ONNX Runtime alone)",
        [
            "model",
            "batch",
            "served p50 / p99 ms",
            "in-process CUDA p50 ms",
            "in-process CPU p50 ms",
        ],
        [
            [
                r["model"],
                r["batch"],
                f"{r['served_p50_ms']:.3f} / {r['served_p99_ms']:.3f}",
                cell(r, "cuda_p50_ms"),
                cell(r, "cpu_p50_ms"),
            ]
            for r in table
        ],
    )
    return table


def _counts(text: str, model: str) -> dict[str, float]:
    """Batches per provider, and rows and batches in all, from one /metrics scrape."""
    from bench.servers import metric_labels, metric_sums

    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("nnserve_compute_seconds_count{") and f'model="{model}"' in line:
            labels = metric_labels(line, "nnserve_compute_seconds_count")[0]
            out[labels["provider"]] = out.get(labels["provider"], 0.0) + float(line.split()[-1])
    sums = metric_sums(text, model)
    out["rows"] = sums.get("nnserve_batch_size_sum", 0.0)
    out["batches"] = sums.get("nnserve_batch_size_count", 0.0)
    return out


def throughput(
    report: Report,
    repository: Path,
    log_dir: Path,
    infos: dict[str, Any],
    rows: dict[str, Any],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Served throughput, batch 1 per request, several workers and load processes."""
    from bench.loadgen import LoadGenerator
    from bench.runner import SERVICE_OF_TASK
    from bench.servers import start_service, wait_serving

    results: list[dict[str, Any]] = []
    with LoadGenerator(args.clients) as gen:
        for model in [m for m in THROUGHPUT_MODELS if m in infos]:
            info = infos[model]
            service = start_service(
                SERVICE_OF_TASK[info.task],
                repository,
                log_dir / f"{model}-throughput",
                models=[model],
                workers=args.workers,
                extra_args=["--device-policy", args.throughput_policy],
            )
            try:
                wait_serving(service, timeout_s=300)
                concurrency = args.mlp_concurrency if model == "mlp" else args.seq_concurrency
                for conc in concurrency:
                    s = _point(gen, service, info, rows[model], conc, args)
                    results.append(s)
                    _judge(report, s, args)
            finally:
                service.stop()
    report.table(
        f"Served throughput: batch 1 per request, closed loop, {args.workers} service workers, "
        f"{args.clients} load processes, policy `{args.throughput_policy}`",
        [
            "model",
            "concurrency",
            "inferences/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "mean batch",
            "batches CUDA / CPU",
            "server / client cores",
        ],
        [
            [
                s["model"],
                s["concurrency"],
                f"{s['inferences_per_s']:,.0f}",
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                s["error_count"],
                s["mean_batch"],
                f"{s['batches_cuda']:,} / {s['batches_cpu']:,}",
                f"{s['server_cores']} / {s['client_cores']}",
            ]
            for s in results
        ],
    )
    return results


def _point(
    gen: Any, service: Any, info: Any, rows: list[Any], conc: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One closed-loop point; server and client CPU and the server's batches in its window."""
    from bench import procstat
    from bench.workload import build_workload, check_response

    workload = build_workload(info, "v2", rows)
    server_pids, client_pids = service.pids(), gen.pids()
    marks: dict[str, Any] = {}

    def mark(key: str) -> None:
        marks[key] = time.monotonic()
        marks[key + "_server"] = procstat.cpu_seconds(server_pids)
        marks[key + "_client"] = procstat.cpu_seconds(client_pids)
        marks[key + "_metrics"] = _counts(service.scrape(), info.name)

    r = gen.run(
        service.address,
        workload.method,
        workload.payloads,
        conc,
        warmup_s=args.warmup,
        duration_s=args.duration,
        channels=max(1, args.channels),
        check=check_response,
        at_start=lambda: mark("a"),
        at_end=lambda: mark("b"),
    )
    s: dict[str, Any] = r.summary(1)
    wall = marks["b"] - marks["a"]
    before, after = marks["a_metrics"], marks["b_metrics"]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    s.update(
        model=info.name,
        policy=args.throughput_policy,
        workers=args.workers,
        server_cores=round((marks["b_server"] - marks["a_server"]) / wall, 2),
        client_cores=round((marks["b_client"] - marks["a_client"]) / wall, 2),
        mean_batch=round(delta["rows"] / delta["batches"], 2) if delta.get("batches") else 0.0,
        batches_cuda=int(delta.get(CUDA, 0)),
        batches_cpu=int(delta.get(CPU, 0)),
    )
    return s


def _judge(report: Report, s: dict[str, Any], args: argparse.Namespace) -> None:
    label = f"{s['model']} c={s['concurrency']}"
    report.check(
        f"{label} no errors",
        s["error_count"] == 0 and s["response_check"] == "ok",
        s["error_example"] or s["response_check"],
    )
    detail = (
        f"{s['inferences_per_s']:,.0f} inf/s, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
        f"mean batch {s['mean_batch']}, batches CUDA {s['batches_cuda']} / CPU {s['batches_cpu']}, "
        f"server {s['server_cores']} cores, client {s['client_cores']} cores"
    )
    if s["model"] != "mlp":
        report.info(label, detail)
        return
    met = s["inferences_per_s"] >= TARGET_INFERENCES_PER_S and s["p99_ms"] <= TARGET_P99_MS
    target = f" (target >= {TARGET_INFERENCES_PER_S:,}/s at p99 <= {TARGET_P99_MS:g} ms)"
    if args.allow_cpu:
        report.info(f"{label} target", detail + target + (" MET" if met else " MISSED"))
    else:
        report.check(f"{label} target", met, detail + target)


# ---------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 2
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--models", default="perceptron,mlp,cnn,lstm,transformer")
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="expect CPUExecutionProvider where onnxruntime has no CUDA provider",
    )
    p.add_argument("--preflight", action="store_true", help="the environment checks only")
    p.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    p.add_argument(
        "--workers", type=int, default=max(1, cpus // 2), help="service workers for throughput"
    )
    p.add_argument(
        "--clients", type=int, default=max(1, cpus // 2), help="load processes for throughput"
    )
    p.add_argument("--channels", type=int, default=4, help="channels per load process")
    p.add_argument("--mlp-concurrency", default="256,1024", help="comma list")
    p.add_argument("--seq-concurrency", default="256", help="comma list (transformer)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--throughput-policy",
        default="measure",
        choices=["measure", "allow_cpu_fallback", "require_gpu", "cpu_only"],
        help="device policy of the throughput services",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument(
        "--tolerance-scale", type=float, default=1.0, help="multiply model.json atol/rtol"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON report; the markdown lands beside it (default bench/results/gpu-check-<time>)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.mlp_concurrency = [int(c) for c in str(args.mlp_concurrency).split(",") if c]
    args.seq_concurrency = [int(c) for c in str(args.seq_concurrency).split(",") if c]
    if args.quick:
        args.duration, args.warmup = 1.0, 0.3
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    report = Report()
    started = time.monotonic()
    expected = environment(report, args.allow_cpu)
    if report.failed or args.preflight:
        return _finish(report, args, started, expected)

    from bench.runner import SERVICE_OF_TASK
    from bench.servers import start_service, wait_serving
    from bench.workload import from_repository, sample_rows

    repository = args.repository.resolve()
    names = [m for m in args.models.split(",") if m and (repository / m).is_dir()]
    if not names:
        report.check("models in the repository", False, f"none of {args.models} under {repository}")
        return _finish(report, args, started, expected)
    infos = {m: from_repository(repository, m) for m in names}
    rows = {m: sample_rows(i, 64, args.seq_len) for m, i in infos.items()}
    cpu_sessions, cuda_sessions = open_in_process(report, infos, expected)
    if report.failed:  # a model that cannot run on CUDA in-process will not when served
        return _finish(report, args, started, expected)
    seconds = 0.2 if args.quick else 1.0
    report.data["placement"] = measured_placement(report, infos, rows, cpu_sessions, seconds / 2)
    log_dir = Path(tempfile.mkdtemp(prefix="nnserve-gpu-check-"))
    services: dict[str, Any] = {}
    try:
        by_service: dict[str, list[str]] = {}
        for m, i in infos.items():
            by_service.setdefault(SERVICE_OF_TASK[i.task], []).append(m)
        for name, models in by_service.items():  # default device policy: nothing passed
            services[name] = start_service(name, repository, log_dir, models=models)
        for service in services.values():
            wait_serving(service, timeout_s=300)
        report.info(
            "services",
            ", ".join(
                f"{s.name} on {s.address} ({', '.join(s.models)})" for s in services.values()
            ),
        )
        address_of = {m: services[SERVICE_OF_TASK[i.task]].address for m, i in infos.items()}
        check_providers(report, services, expected)
        report.data["max_abs_diff"] = check_outputs(
            report, address_of, infos, rows, cpu_sessions, args.tolerance_scale
        )
        correctness_table(report, infos)
        report.data["latency"] = latency_table(
            report, address_of, infos, rows, cpu_sessions, cuda_sessions, seconds
        )
    except Exception as exc:
        report.check("services up and answering", False, f"{type(exc).__name__}: {exc}")
    finally:
        for service in services.values():
            service.stop()
    if not args.skip_throughput and not report.failed:
        try:
            report.data["throughput"] = throughput(report, repository, log_dir, infos, rows, args)
        except Exception as exc:
            report.check("served throughput", False, f"{type(exc).__name__}: {exc}")
    return _finish(report, args, started, expected)


def _heading(report: Report, expected: str) -> list[str]:
    """Machine and software the markdown tables were measured on."""
    import onnxruntime as ort

    from bench.procstat import cpu_model
    from bench.runner import code_version

    version = code_version()
    gpu = report.data.get("gpu", "not found")
    gpu = "a machine without nvidia-smi" if gpu == "not found" else gpu
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Run of {when} on {gpu}; {cpu_model()} ({os.cpu_count()} cores); "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__} "
        f"({'GPU' if CUDA in ort.get_available_providers() else 'CPU'} build), "
        f"models expected on {expected}; commit `{version['git_commit']}`"
        + (" with local changes to services/" if version["services_uncommitted"] else "")
        + ".",
        "",
    ]


def _finish(report: Report, args: argparse.Namespace, started: float, expected: str) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("bench/results") / f"gpu-check-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"checks": report.checks, **report.data, "seconds": round(time.monotonic() - started, 1)}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    markdown = None
    if report.markdown:
        markdown = out.with_suffix(".md")
        with contextlib.suppress(Exception):  # a heading detail must not lose the tables
            report.markdown[:0] = _heading(report, expected)
        markdown.write_text("\n".join(report.markdown))
        print("\n" + "\n".join(report.markdown))
    print("\n==== gpu_check summary ====")
    for c in report.checks:
        if c["ok"] is False or c["check"].endswith("target") or c["check"] == "nvidia-smi":
            tag = {True: "PASS", False: "FAIL", None: "INFO"}[c["ok"]]
            print(f"{tag} {c['check']}: {c['detail']}")
    passed = sum(1 for c in report.checks if c["ok"] is True)
    failed = len(report.failed)
    where = f"{out}" + (f", {markdown}" if markdown else "")
    print(f"{passed} passed, {failed} failed in {doc['seconds']} s; report {where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
