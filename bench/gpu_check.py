"""GPU check: are the services really on CUDA, right, and fast? One command, one summary.

    timeout 900 python -m bench.gpu_check --repository model_repository
    python -m bench.gpu_check --repository model_repository --allow-cpu --quick   # no GPU

On a machine with an NVIDIA GPU and onnxruntime-gpu (see the GPU machine README: there,
`export PYTHONPATH=/tmp/ortgpu:$PYTHONPATH` first), this
  1. checks the environment (onnxruntime build and providers, nvidia-smi, the modules the
     services import) and preloads the CUDA libraries (`import torch`, else
     onnxruntime.preload_dlls()) before any session exists;
  2. starts both services with the default device policy and asserts, for every model,
     that DescribeModel.provider, ModelConfig's execution_provider parameter and the
     nnserve_model_info metric all say CUDAExecutionProvider;
  3. checks served outputs (KServe v2, batch 1 and 64) against in-process CPU ONNX
     Runtime within the model's model.json tolerances;
  4. prints latency at batch 1 and 64: served, in-process CUDA and in-process CPU;
  5. runs the benchmark's mlp point (batch 1 per request, closed loop) with many
     concurrent clients against a multi-worker classify service; target >= 50,000
     inferences/s at p99 <= 10 ms, reported as met or missed.
With --allow-cpu the same checks expect CPUExecutionProvider where this onnxruntime has
no CUDA provider (so the CPU-only paths run anywhere). Exit status: 0 when every
correctness check passes (providers, outputs, no errors), 1 otherwise; the throughput
target is reported, not enforced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import os
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
SERVICE_MODULES = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "pydantic_settings",
    "prometheus_client",
    "numpy",
    "onnxruntime",
)


class Report:
    """Checks as they happen (PASS / FAIL / INFO lines) and everything measured."""

    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        log.info("%s %s%s", "PASS" if ok else "FAIL", name, f": {detail}" if detail else "")
        return ok

    def info(self, name: str, detail: str) -> None:
        self.checks.append({"check": name, "ok": None, "detail": detail})
        log.info("INFO %s: %s", name, detail)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["ok"] is False]


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


def environment(report: Report, allow_cpu: bool) -> str:
    """Preflight; returns the provider every model is expected to run on."""
    report.info("python", f"{sys.version.split()[0]} at {sys.executable}")
    report.info("preload", preload_cuda())
    import onnxruntime as ort

    providers = ort.get_available_providers()
    report.info(
        "onnxruntime", f"{ort.__version__} from {Path(ort.__file__).parent}; providers {providers}"
    )
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        report.info("nvidia-smi", smi.stdout.strip() or smi.stderr.strip())
    else:
        report.info("nvidia-smi", "not found")
    missing = [m for m in SERVICE_MODULES if importlib.util.find_spec(m) is None]
    report.check(
        "service dependencies importable",
        not missing,
        f"missing {missing}" if missing else "all present",
    )
    has_cuda = CUDA in providers
    if not allow_cpu:
        report.check(
            "onnxruntime offers CUDAExecutionProvider",
            has_cuda,
            "install onnxruntime-gpu (or pass --allow-cpu)" if not has_cuda else "",
        )
    return CUDA if has_cuda else CPU


# ---------------------------------------------------------------------- checks


def check_providers(report: Report, services: dict[str, Any], expected: str) -> None:
    import grpc

    from bench.servers import metric_labels
    from protos import grpc_service_pb2 as pb
    from protos import grpc_service_pb2_grpc as pb_grpc
    from protos import nnserve_pb2 as npb
    from protos import nnserve_pb2_grpc as npb_grpc

    for service in services.values():
        try:
            info = metric_labels(service.scrape(), "nnserve_model_info")
        except OSError as exc:
            info = []
            report.check(f"{service.name} /metrics readable", False, str(exc))
        with grpc.insecure_channel(service.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            domain = npb_grpc.PredictorStub(channel)
            for model in service.models:
                described = domain.DescribeModel(
                    npb.DescribeModelRequest(model_name=model), timeout=10
                )
                config = v2.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10).config
                configured = config.parameters["execution_provider"].string_value
                metric = sorted(
                    {labels.get("provider", "") for labels in info if labels.get("model") == model}
                )
                seen = {
                    "DescribeModel": described.provider,
                    "ModelConfig": configured,
                    "nnserve_model_info": ",".join(metric) or "(none)",
                }
                ok = all(v == expected for v in seen.values())
                report.check(
                    f"{model} runs on {expected}",
                    ok,
                    ", ".join(f"{k} {v}" for k, v in seen.items()),
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
) -> None:
    """Served outputs vs in-process CPU ONNX Runtime, elementwise within model.json tolerances."""
    import grpc

    from bench.floor import feeds_for
    from bench.workload import V2_INFER
    from contract.model import worst as contract_worst

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
        report.check(
            f"{name} outputs match in-process CPU",
            not bad,
            f"max |diff| {worst:.3g} (atol {atol:g}, rtol {rtol:g})"
            + (f"; {bad[:3]}" if bad else ""),
        )


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
    lines = [
        f"{'model':<12} {'batch':>5} {'served p50/p99 ms':>18} "
        f"{'in-proc CUDA p50':>17} {'in-proc CPU p50':>16}"
    ]
    for r in table:
        cuda = f"{r['cuda_p50_ms']:.3f}" if "cuda_p50_ms" in r else "-"
        lines.append(
            f"{r['model']:<12} {r['batch']:>5} "
            f"{r['served_p50_ms']:>8.3f}/{r['served_p99_ms']:<9.3f} "
            f"{cuda:>17} {r.get('cpu_p50_ms', float('nan')):>16.3f}"
        )
    report.data["latency_table_text"] = "\n".join(lines)
    return table


def mlp_point(
    report: Report,
    repository: Path,
    log_dir: Path,
    rows: list[Any],
    info: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The benchmark's mlp point, scaled out: several service workers, several load processes."""
    from bench import procstat
    from bench.loadgen import LoadGenerator
    from bench.servers import start_service, wait_serving
    from bench.workload import build_workload, check_response

    workload = build_workload(info, "v2", rows)
    service = start_service(
        "classify",
        repository,
        log_dir / "mlp-point",
        models=["mlp"],
        workers=args.workers,
        metrics=False,
    )
    results = []
    try:
        wait_serving(service, timeout_s=180)
        with LoadGenerator(args.clients) as gen:
            server_pids, client_pids = service.pids(), gen.pids()
            marks: dict[str, float] = {}

            def mark(key: str) -> None:
                marks[key] = time.monotonic()
                marks[key + "_server"] = procstat.cpu_seconds(server_pids)
                marks[key + "_client"] = procstat.cpu_seconds(client_pids)

            for conc in args.mlp_concurrency:
                r = gen.run(
                    service.address,
                    workload.method,
                    workload.payloads,
                    conc,
                    warmup_s=args.mlp_warmup,
                    duration_s=args.mlp_duration,
                    channels=max(1, args.channels),
                    check=check_response,
                    at_start=lambda: mark("a"),
                    at_end=lambda: mark("b"),
                )
                s = r.summary(1)
                wall = marks["b"] - marks["a"]
                s["server_cores"] = round((marks["b_server"] - marks["a_server"]) / wall, 2)
                s["client_cores"] = round((marks["b_client"] - marks["a_client"]) / wall, 2)
                results.append(s)
                met = (
                    s["inferences_per_s"] >= TARGET_INFERENCES_PER_S
                    and s["p99_ms"] <= TARGET_P99_MS
                )
                report.info(
                    f"mlp c={conc} ({args.workers} workers, {s['client_processes']} load procs)",
                    f"{s['inferences_per_s']:,.0f} inf/s, p50 {s['p50_ms']:.2f} ms, "
                    f"p99 {s['p99_ms']:.2f} ms, errors {s['error_count']}, "
                    f"server {s['server_cores']} cores, client {s['client_cores']} cores "
                    f"-> target >= {TARGET_INFERENCES_PER_S:,}/s at p99 <= {TARGET_P99_MS} ms "
                    f"{'MET' if met else 'MISSED'}",
                )
                report.check(
                    f"mlp c={conc} no errors",
                    s["error_count"] == 0 and s["response_check"] == "ok",
                    s["error_example"] or s["response_check"],
                )
    finally:
        service.stop()
    return {"workers": args.workers, "load_processes": args.clients, "points": results}


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
    p.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    p.add_argument(
        "--workers", type=int, default=max(1, cpus // 2), help="classify workers for the mlp point"
    )
    p.add_argument(
        "--clients",
        type=int,
        default=max(1, cpus // 2 - 1),
        help="load processes for the mlp point",
    )
    p.add_argument(
        "--channels", type=int, default=4, help="channels per load process for the mlp point"
    )
    p.add_argument("--mlp-concurrency", default="256", help="comma list, e.g. 128,256,512")
    p.add_argument("--mlp-duration", type=float, default=10.0)
    p.add_argument("--mlp-warmup", type=float, default=2.0)
    p.add_argument("--skip-mlp-point", action="store_true")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument(
        "--tolerance-scale", type=float, default=1.0, help="multiply model.json atol/rtol"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON report (default bench/results/gpu-check-<time>.json)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.mlp_concurrency = [int(c) for c in str(args.mlp_concurrency).split(",") if c]
    if args.quick:
        args.mlp_duration, args.mlp_warmup = 1.0, 0.3
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    report = Report()
    started = time.monotonic()
    expected = environment(report, args.allow_cpu)
    if report.failed:
        return _finish(report, args, started)

    from bench.floor import open_model
    from bench.runner import SERVICE_OF_TASK
    from bench.servers import start_service, wait_serving
    from bench.workload import from_repository, sample_rows

    repository = args.repository.resolve()
    names = [m for m in args.models.split(",") if m and (repository / m).is_dir()]
    if not names:
        report.check("models in the repository", False, f"none of {args.models} under {repository}")
        return _finish(report, args, started)
    infos = {m: from_repository(repository, m) for m in names}
    rows = {m: sample_rows(i, 64, args.seq_len) for m, i in infos.items()}
    cpu_sessions = {m: open_model(i, "cpu_only") for m, i in infos.items()}
    cuda_sessions: dict[str, Any] = {}
    if expected == CUDA:
        for m, i in infos.items():
            try:
                cuda_sessions[m] = open_model(i, "require_gpu")
            except Exception as exc:
                report.check(f"{m} in-process CUDA session", False, str(exc))
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
        check_outputs(report, address_of, infos, rows, cpu_sessions, args.tolerance_scale)
        report.data["latency"] = latency_table(
            report, address_of, infos, rows, cpu_sessions, cuda_sessions, 0.3 if args.quick else 1.0
        )
    except Exception as exc:
        report.check("services up and answering", False, f"{type(exc).__name__}: {exc}")
    finally:
        for service in services.values():
            service.stop()
    if not args.skip_mlp_point and "mlp" in infos and not report.failed:
        try:
            report.data["mlp_point"] = mlp_point(
                report, repository, log_dir, rows["mlp"], infos["mlp"], args
            )
        except Exception as exc:
            report.check("mlp point", False, f"{type(exc).__name__}: {exc}")
    return _finish(report, args, started)


def _finish(report: Report, args: argparse.Namespace, started: float) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("bench/results") / f"gpu-check-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"checks": report.checks, **report.data, "seconds": round(time.monotonic() - started, 1)}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print("\n==== gpu_check summary ====")
    if "latency_table_text" in report.data:
        print(report.data["latency_table_text"])
    for c in report.checks:
        if (
            c["ok"] is False
            or c["check"].startswith("mlp c=")
            or c["check"] in ("onnxruntime", "nvidia-smi")
        ):
            tag = {True: "PASS", False: "FAIL", None: "INFO"}[c["ok"]]
            print(f"{tag} {c['check']}: {c['detail']}")
    passed = sum(1 for c in report.checks if c["ok"] is True)
    failed = len(report.failed)
    print(f"{passed} passed, {failed} failed in {doc['seconds']} s; report {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
