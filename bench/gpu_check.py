"""GPU check: are the services really on CUDA, right, and fast? One command, one summary.

    make gpu-check                                    # fails at once without an NVIDIA GPU
    timeout 900 python -m bench.gpu_check --repository model_repository
    python -m bench.gpu_check --preflight             # the environment checks alone
    python -m bench.gpu_check --allow-cpu --quick     # the CPU-only paths, anywhere

  1. environment: onnxruntime offers CUDAExecutionProvider and the CUDA driver reports a
     GPU (else it stops here, in about a second, exit 1); nvidia-smi; the modules the
     services import; then the CUDA libraries are preloaded before any session exists;
  2. every model opens in-process on CUDA (policy require_gpu) and passes its goldens;
  3. the `measure` policy (as the services open it) times CPU and CUDA per batch size
     and routes each size; every size it sends to the GPU is timed again on both: the
     GPU must not be slower there;
  4. both services start with the default policy; DescribeModel.provider, ModelConfig's
     execution_provider and nnserve_model_info say CUDAExecutionProvider with no
     fallback; served outputs (batch 1 and 64) equal in-process CPU ONNX Runtime within
     the model.json tolerances; latency at batch 1 and 64, served and in-process;
  5. served throughput of the mlp and the transformer, measured by the benchmark's
     harness (batch 1 per request, closed loop, --workers service workers, --clients
     load processes): target mlp >= 50,000 inferences/s at p99 <= 10 ms.
Tables are printed and written as markdown beside the JSON report. Exit status 0 when
every check passes (targets included). With --allow-cpu the checks expect
CPUExecutionProvider where onnxruntime has no CUDA provider, and the target is reported,
not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
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

import grpc
import numpy as np

from bench import harness
from bench.harness import SERVICE_OF_TASK, Server, measure_point, start_service, wait_ready
from bench.loadgen import LoadGenerator
from bench.report import table
from bench.workload import (
    V2_INFER,
    ModelInfo,
    Row,
    Workload,
    build_workload,
    feeds_for,
    floor_point,
    from_repository,
    open_model,
    sample_rows,
    time_calls,
    v2_request,
)
from contract.model import ModelLoadError, from_raw, worst
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc

log = logging.getLogger("bench")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
TARGET_INFERENCES_PER_S, TARGET_P99_MS = 50_000, 10.0
SLOWER_SLACK = 1.10  # timing noise allowed before "the GPU is slower" fails
SERVICE_MODULES = ("grpc", "grpc_health", "grpc_reflection", "pydantic_settings",
                   "prometheus_client", "numpy", "onnxruntime")  # fmt: skip
THROUGHPUT_MODELS = ("mlp", "transformer")


class Check:
    """One run of the check: PASS / FAIL / INFO lines as they happen, what was measured,
    and the same tables in markdown, headed by the machine and versions."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checks: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}
        self.markdown: list[str] = []
        self.expected = CPU  # the provider every model should run on
        self.infos: dict[str, ModelInfo] = {}
        self.rows: dict[str, list[Row]] = {}
        self.sessions: dict[str, dict[str, Any]] = {"cpu": {}, "cuda": {}}

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        log.info("%s %s%s", "PASS" if ok else "FAIL", name, f": {detail}" if detail else "")
        return ok

    def info(self, name: str, detail: str) -> None:
        self.checks.append({"check": name, "ok": None, "detail": detail})
        log.info("INFO %s: %s", name, detail)

    def table(self, title: str, header: list[str], rows: list[list[Any]]) -> None:
        cells = [[str(cell) for cell in row] for row in rows]
        self.markdown += [f"**{title}**", "", table(header, cells, markdown=True), ""]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["ok"] is False]

    # ------------------------------------------------------------------ environment

    def environment(self) -> None:
        """Cheapest first, so that a machine without CUDA fails in about a second."""
        import onnxruntime as ort

        from services.core.runtime import cuda_device_count

        self.info("python", f"{sys.version.split()[0]} at {sys.executable}")
        providers = ort.get_available_providers()
        where = Path(ort.__file__).parent
        self.info("onnxruntime", f"{ort.__version__} from {where}; providers {providers}")
        has_cuda, allow_cpu = CUDA in providers, self.args.allow_cpu
        why = "this is the CPU build: install onnxruntime-gpu (make venv ORT=gpu), or pass "
        why += "--allow-cpu to check the CPU paths"
        if not allow_cpu and not self.check(
            "onnxruntime offers CUDAExecutionProvider", has_cuda, "" if has_cuda else why
        ):
            return
        self.data["gpu"] = nvidia_smi()
        self.info("nvidia-smi", self.data["gpu"])
        gpus = cuda_device_count() if has_cuda else 0
        seen = f"{gpus} device(s)" if gpus else "no GPU visible (driver, CUDA_VISIBLE_DEVICES?)"
        if not allow_cpu and not self.check("the CUDA driver reports a GPU", gpus > 0, seen):
            return
        missing = [m for m in SERVICE_MODULES if importlib.util.find_spec(m) is None]
        detail = f"missing {missing}" if missing else "all present"
        self.check("service dependencies importable", not missing, detail)
        if has_cuda:
            self.info("preload", preload_cuda())
        self.expected = CUDA if has_cuda and gpus > 0 else CPU

    # ------------------------------------------------------------------ in-process

    def open_in_process(self) -> None:
        """CPU sessions (the reference) and, with CUDA expected, require_gpu sessions that
        must pass their goldens on CUDA."""
        from services.core.runtime import check_goldens

        for m, info in self.infos.items():
            assert info.spec is not None
            self.sessions["cpu"][m] = open_model(info, "cpu_only")
            name = f"{m} loads on {self.expected} and passes its goldens"
            try:
                session = open_model(info, "require_gpu" if self.expected == CUDA else "cpu_only")
                check_goldens(info.spec, session)
            except ModelLoadError as exc:
                self.check(name, False, str(exc))
                continue
            cases = f"{len(info.spec.goldens)} golden cases"
            if self.check(
                name, session.provider == self.expected, f"{cases} on {session.provider}"
            ):
                self.data.setdefault("goldens", {})[m] = f"{len(info.spec.goldens)} pass"
            if self.expected == CUDA:
                self.sessions["cuda"][m] = session

    def placement(self, seconds: float) -> None:
        """The measure policy as the services open it (sizes 1, 8, max), then every size it
        routes to CUDA timed again on both providers: the GPU must not be slower there."""
        from services.core.runtime import open_session
        from services.settings import DevicePolicy, Settings

        settings, found = Settings(), []
        for m, info in self.infos.items():
            assert info.spec is not None
            top = settings.serving_config(m, info.spec.serving).max_batch_size
            measured = open_session(
                info.spec, DevicePolicy.MEASURE, settings.intra_op_threads, (1, min(8, top), top)
            )
            slower = []
            for n in sorted({*(2**k for k in range(top.bit_length()) if 2**k < top), top}):
                row: dict[str, Any] = {
                    "model": m,
                    "batch": n,
                    "routed_to": measured.provider_for(n),
                }
                for provider, timings in measured.placement.items():
                    if n in timings:
                        key = "cuda" if provider == CUDA else "cpu"
                        row[f"measured_{key}_ms"] = round(timings[n] * 1e3, 4)
                if row["routed_to"] == CUDA:  # measured.run sends this size to CUDA
                    feeds = feeds_for(self.rows[m], n)
                    for key, session in (("cuda", measured), ("cpu", self.sessions["cpu"][m])):
                        t = float(np.median(time_calls(session, feeds, seconds, 20)))
                        row[f"recheck_{key}_ms"] = round(t * 1e3, 4)
                    if row["recheck_cuda_ms"] > row["recheck_cpu_ms"] * SLOWER_SLACK:
                        slower.append(f"batch {n}: CUDA {row['recheck_cuda_ms']:.3f} ms > CPU "
                                      f"{row['recheck_cpu_ms']:.3f}")  # fmt: skip
                found.append(row)
            on_gpu = [r["batch"] for r in found if r["model"] == m and r["routed_to"] == CUDA]
            detail = f"CUDA from batch {min(on_gpu)}" if on_gpu else "every batch size on CPU"
            detail += f"; slower: {slower}" if slower else ""
            if measured.fallback_reason:
                detail += f"; fallback {measured.fallback_reason.value}"
            self.check(
                f"{m} measure policy: GPU not slower than CPU where chosen", not slower, detail
            )

        def ms(r: dict[str, Any], key: str) -> str:
            return f"{r[key]:.3f}" if key in r else "-"

        self.table(
            "`measure` policy: time per batch at load, route, and the re-check on GPU-routed sizes",
            ["model", "batch", "CPU ms", "CUDA ms", "routed to", "re-check CPU / CUDA ms"],
            [[r["model"], r["batch"], ms(r, "measured_cpu_ms"), ms(r, "measured_cuda_ms"),
              "CUDA" if r["routed_to"] == CUDA else "CPU",
              f"{ms(r, 'recheck_cpu_ms')} / {ms(r, 'recheck_cuda_ms')}"
              if "recheck_cpu_ms" in r else "-"]
             for r in found if "measured_cpu_ms" in r or "recheck_cpu_ms" in r],
        )  # fmt: skip
        self.data["placement"] = found

    # ------------------------------------------------------------------ served

    def providers(self, services: dict[str, Server]) -> None:
        """Provider in all three places; with CUDA expected, no fallback anywhere."""
        for service in services.values():
            samples = harness.metric_samples(service.scrape())
            with grpc.insecure_channel(service.address) as channel:
                v2, domain = (
                    pb_grpc.GRPCInferenceServiceStub(channel),
                    npb_grpc.PredictorStub(channel),
                )
                for m in service.models:
                    described = domain.DescribeModel(
                        npb.DescribeModelRequest(model_name=m), timeout=10
                    )
                    config = v2.ModelConfig(pb.ModelConfigRequest(name=m), timeout=10).config
                    fallback = config.parameters["execution_provider_fallback"].string_value
                    labels = {(n, k, v) for n, la, _ in samples if la.get("model") == m
                              for k, v in la.items()}  # fmt: skip
                    info = sorted(
                        v for n, k, v in labels if (n, k) == ("nnserve_model_info", "provider")
                    )
                    fell = sorted(
                        v for n, k, v in labels if (n, k) == ("nnserve_provider_fallback", "reason")
                    )
                    seen = {"DescribeModel": described.provider,
                            "ModelConfig": config.parameters["execution_provider"].string_value,
                            "nnserve_model_info": ",".join(info) or "(none)"}  # fmt: skip
                    served = {"provider": described.provider, "fallback": fallback}
                    self.data.setdefault("served", {})[m] = served
                    ok = all(v == self.expected for v in seen.values())
                    ok = ok and (self.expected != CUDA or not (fallback or fell))
                    detail = ", ".join(f"{k} {v}" for k, v in seen.items())
                    detail += f"; fallback: ModelConfig {fallback or '(none)'}, "
                    detail += f"nnserve_provider_fallback {','.join(fell) or '(none)'}"
                    self.check(f"{m} served on {self.expected}", ok, detail)

    def outputs(self, address_of: dict[str, str]) -> None:
        """Served outputs vs in-process CPU ONNX Runtime, within model.json tolerances."""
        for m, info in self.infos.items():
            assert info.spec is not None
            atol, rtol = (
                info.spec.atol * self.args.tolerance_scale,
                info.spec.rtol * self.args.tolerance_scale,
            )
            largest, bad = 0.0, []
            session = self.sessions["cpu"][m]
            cases = [
                (f"b1#{i}", feeds_for(self.rows[m][i:], 1))
                for i in range(min(8, len(self.rows[m])))
            ]
            with grpc.insecure_channel(address_of[m]) as channel:
                stub = channel.unary_unary(V2_INFER)
                for label, feeds in [*cases, ("b64", feeds_for(self.rows[m], 64))]:
                    answer = pb.ModelInferResponse.FromString(
                        stub(v2_request(info, feeds), timeout=30)
                    )
                    raws = zip(answer.outputs, answer.raw_output_contents, strict=True)
                    served = {o.name: from_raw(raw, o.datatype, o.shape) for o, raw in raws}
                    for out, want in zip(session.output_names, session.run(feeds), strict=True):
                        got, ref = served[out].astype(np.float64), want.astype(np.float64)
                        if got.shape != ref.shape:
                            bad.append(f"{label} {out} shape {got.shape} != {ref.shape}")
                            continue
                        diff = float(np.abs(got - ref).max(initial=0.0))
                        largest = max(largest, diff)
                        if worst(got, ref, atol, rtol)[0] > 0:
                            bad.append(f"{label} {out} off by {diff:.3g}")
            self.data.setdefault("max_abs_diff", {})[m] = largest
            detail = f"max |diff| {largest:.3g} (atol {atol:g}, rtol {rtol:g})"
            self.check(
                f"{m} outputs match in-process CPU",
                not bad,
                detail + (f"; {bad[:3]}" if bad else ""),
            )

    def models_table(self) -> None:
        """Where each model runs and how right it is: the first of the markdown tables."""
        served, goldens = self.data.get("served", {}), self.data.get("goldens", {})
        diffs = self.data.get("max_abs_diff", {})
        tables, self.markdown = self.markdown, []
        self.table(
            "Models: provider read back when served (default policy), goldens in-process, "
            "served outputs vs in-process CPU",
            ["model", "served on", "fallback", "goldens", "max abs diff vs CPU"],
            [[m, served.get(m, {}).get("provider", "-"),
              served.get(m, {}).get("fallback") or "none", goldens.get(m, "-"),
              f"{diffs[m]:.3g}" if m in diffs else "-"] for m in self.infos],
        )  # fmt: skip
        self.markdown += tables

    def latency(self, gen: LoadGenerator, address_of: dict[str, str], seconds: float) -> None:
        """One client at batch 1 and 64: served (the harness's point at concurrency 1) and
        in-process on each provider (the floor)."""
        found = []
        for m, info in self.infos.items():
            for batch in (1, 64):
                request = v2_request(info, feeds_for(self.rows[m], batch))
                workload = Workload(m, "v2", V2_INFER, (request,), rows_per_request=batch)
                p = measure_point(gen, address_of[m], workload, 1, warmup_s=0.2, duration_s=seconds)
                row = {
                    "model": m,
                    "batch": batch,
                    "served_p50_ms": p["p50_ms"],
                    "served_p99_ms": p["p99_ms"],
                }
                for key, sessions in self.sessions.items():
                    if m in sessions:
                        floor = floor_point(sessions[m], info, self.rows[m], batch, seconds / 2)
                        row[f"{key}_p50_ms"], row[f"{key}_p99_ms"] = (
                            floor["p50_ms"],
                            floor["p99_ms"],
                        )
                found.append(row)

        def cell(r: dict[str, Any], key: str) -> str:
            return f"{r[key]:.3f}" if key in r else "-"

        self.table(
            "Latency, one client (served: default policy; in-process: ONNX Runtime alone)",
            ["model", "batch", "served p50 / p99 ms", "in-process CUDA p50 ms",
             "in-process CPU p50 ms"],
            [[r["model"], r["batch"], f"{r['served_p50_ms']:.3f} / {r['served_p99_ms']:.3f}",
              cell(r, "cuda_p50_ms"), cell(r, "cpu_p50_ms")] for r in found],
        )  # fmt: skip
        self.data["latency"] = found

    def throughput(self, gen: LoadGenerator, log_dir: Path) -> None:
        """Served throughput, batch 1 per request, several workers and load processes."""
        args, results = self.args, []
        for m in [m for m in THROUGHPUT_MODELS if m in self.infos]:
            info = self.infos[m]
            service = start_service(
                SERVICE_OF_TASK[info.task], args.repository, log_dir, [m], workers=args.workers,
                label=f"{m}-throughput", extra_args=["--device-policy", args.throughput_policy],
            )  # fmt: skip
            try:
                wait_ready(service, timeout_s=300)
                workload = build_workload(info, "v2", self.rows[m])
                for conc in args.mlp_concurrency if m == "mlp" else args.seq_concurrency:
                    p = measure_point(gen, service.address, workload, conc, server=service,
                                      warmup_s=args.warmup, duration_s=args.duration,
                                      channels=max(1, args.channels))  # fmt: skip
                    by = p.get("batches_by_provider", {})
                    p.update(policy=args.throughput_policy, workers=args.workers,
                             mean_batch=p.get("mean_batch_size", 0.0),
                             batches_cuda=by.get(CUDA, 0), batches_cpu=by.get(CPU, 0))  # fmt: skip
                    results.append(p)
                    self.judge(p)
            finally:
                service.stop()
        self.table(
            f"Served throughput: batch 1 per request, closed loop, {args.workers} service workers, "
            f"{args.clients} load processes, policy `{args.throughput_policy}`",
            ["model", "concurrency", "inferences/s", "p50 ms", "p99 ms", "errors", "mean batch",
             "batches CUDA / CPU", "server / client cores"],
            [[s["model"], s["concurrency"], f"{s['inferences_per_s']:,.0f}", f"{s['p50_ms']:.2f}",
              f"{s['p99_ms']:.2f}", s["error_count"], s["mean_batch"],
              f"{s['batches_cuda']:,} / {s['batches_cpu']:,}",
              f"{s['server_cores']} / {s['client_cores']}"] for s in results],
        )  # fmt: skip
        self.data["throughput"] = results

    def judge(self, s: dict[str, Any]) -> None:
        label = f"{s['model']} c={s['concurrency']}"
        ok = s["error_count"] == 0 and s["response_check"] == "ok"
        self.check(f"{label} no errors", ok, s["error_example"] or s["response_check"])
        detail = (f"{s['inferences_per_s']:,.0f} inf/s, p50 {s['p50_ms']:.2f} ms, p99 "
                  f"{s['p99_ms']:.2f} ms, mean batch {s['mean_batch']}, batches CUDA "
                  f"{s['batches_cuda']} / CPU {s['batches_cpu']}, server {s['server_cores']} "
                  f"cores, client {s['client_cores']} cores")  # fmt: skip
        if s["model"] != "mlp":
            self.info(label, detail)
            return
        met = s["inferences_per_s"] >= TARGET_INFERENCES_PER_S and s["p99_ms"] <= TARGET_P99_MS
        detail += f" (target >= {TARGET_INFERENCES_PER_S:,}/s at p99 <= {TARGET_P99_MS:g} ms)"
        if self.args.allow_cpu:
            self.info(f"{label} target", detail + (" MET" if met else " MISSED"))
        else:
            self.check(f"{label} target", met, detail)

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        self.environment()
        if self.failed or self.args.preflight:
            return
        repository = self.args.repository = self.args.repository.resolve()
        names = [m for m in self.args.models.split(",") if m and (repository / m).is_dir()]
        if not names:
            self.check("models in the repository", False, f"none of {self.args.models}")
            return
        self.infos = {m: from_repository(repository, m) for m in names}
        self.rows = {m: sample_rows(i, 64, self.args.seq_len) for m, i in self.infos.items()}
        self.open_in_process()
        if self.failed:  # a model that cannot run on CUDA in-process will not when served
            return
        seconds = 0.2 if self.args.quick else 1.0
        self.placement(seconds / 2)
        log_dir = Path(tempfile.mkdtemp(prefix="nnserve-gpu-check-"))
        services: dict[str, Server] = {}
        with LoadGenerator(self.args.clients) as gen:
            try:
                by_service: dict[str, list[str]] = {}
                for m, i in self.infos.items():
                    by_service.setdefault(SERVICE_OF_TASK[i.task], []).append(m)
                for name, models in by_service.items():  # default device policy: none passed
                    services[name] = start_service(name, repository, log_dir, models)
                for service in services.values():
                    wait_ready(service, timeout_s=300)
                self.info("services", ", ".join(f"{s.name} on {s.address} ({', '.join(s.models)})"
                                                for s in services.values()))  # fmt: skip
                address_of = {m: s.address for s in services.values() for m in s.models}
                self.providers(services)
                self.outputs(address_of)
                self.models_table()
                self.latency(gen, address_of, seconds)
            except Exception as exc:
                self.check("services up and answering", False, f"{type(exc).__name__}: {exc}")
            finally:
                for service in services.values():
                    service.stop()
            if not self.args.skip_throughput and not self.failed:
                try:
                    self.throughput(gen, log_dir)
                except Exception as exc:
                    self.check("served throughput", False, f"{type(exc).__name__}: {exc}")

    def finish(self, started: float) -> int:
        """The JSON report, the markdown beside it, the summary; the exit status."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = self.args.out or Path("bench/results") / f"gpu-check-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"checks": self.checks, **self.data, "seconds": round(time.monotonic() - started, 1)}
        out.write_text(json.dumps(doc, indent=2) + "\n")
        if self.markdown:
            with contextlib.suppress(Exception):  # a heading detail must not lose the tables
                self.markdown[:0] = [self.heading(), ""]
            out.with_suffix(".md").write_text("\n".join(self.markdown))
            print("\n" + "\n".join(self.markdown))
        print("\n==== gpu_check summary ====")
        tags = {True: "PASS", False: "FAIL", None: "INFO"}
        for c in self.checks:
            if c["ok"] is False or c["check"].endswith("target") or c["check"] == "nvidia-smi":
                print(f"{tags[c['ok']]} {c['check']}: {c['detail']}")
        passed = sum(1 for c in self.checks if c["ok"] is True)
        where = f"{out}" + (f", {out.with_suffix('.md')}" if self.markdown else "")
        print(f"{passed} passed, {len(self.failed)} failed in {doc['seconds']} s; report {where}")
        return 1 if self.failed else 0

    def heading(self) -> str:
        """The machine and software the markdown tables were measured on."""
        import onnxruntime as ort

        m = harness.machine_context()
        gpu = self.data.get("gpu", "not found")
        gpu = "a machine without nvidia-smi" if gpu == "not found" else gpu
        build = "GPU" if CUDA in ort.get_available_providers() else "CPU"
        local = " with local changes to services/" if m["services_uncommitted"] else ""
        return (f"Run of {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} on {gpu}; {m['cpu_model']} "
                f"({m['cpus']} cores); Python {m['python']}, onnxruntime {ort.__version__} "
                f"({build} build), models expected on {self.expected}; commit "
                f"`{m['git_commit']}`{local}.")  # fmt: skip


def preload_cuda() -> str:
    """Make CUDA/cuDNN libraries findable before the first session."""
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch  # loads the nvidia-* libraries it was built with

            return f"torch {torch.__version__} imported"
        except Exception as exc:  # a broken torch must not stop the check
            log.warning("import torch failed: %s", exc)
    import onnxruntime as ort

    try:
        ort.preload_dlls()
        return "onnxruntime.preload_dlls() called"
    except Exception as exc:
        return f"onnxruntime.preload_dlls() failed: {exc}"


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "not found"
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        smi = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "timed out after 30 s"
    return smi.stdout.strip() or smi.stderr.strip() or f"exit code {smi.returncode}"


def parser() -> argparse.ArgumentParser:
    half = max(1, (os.cpu_count() or 2) // 2)
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = p.add_argument
    add("--repository", type=Path, default=Path("model_repository"))
    add("--models", default="perceptron,mlp,cnn,lstm,transformer")
    add("--allow-cpu", action="store_true",
        help="expect CPUExecutionProvider where onnxruntime has no CUDA provider")  # fmt: skip
    add("--preflight", action="store_true", help="the environment checks only")
    add("--quick", action="store_true", help="short timings (smoke test)")
    add("--workers", type=int, default=half, help="service workers for throughput")
    add("--clients", type=int, default=half, help="load processes for throughput")
    add("--channels", type=int, default=4, help="channels per load process")
    add("--mlp-concurrency", default="256,1024", help="comma list")
    add("--seq-concurrency", default="256", help="comma list (transformer)")
    add("--duration", type=float, default=10.0, help="seconds measured per point")
    add("--warmup", type=float, default=2.0)
    add("--throughput-policy", default="measure",
        choices=["measure", "allow_cpu_fallback", "require_gpu", "cpu_only"],
        help="device policy of the throughput services")  # fmt: skip
    add("--skip-throughput", action="store_true")
    add("--seq-len", type=int, default=32)
    add("--tolerance-scale", type=float, default=1.0, help="multiply model.json atol/rtol")
    add("--out", type=Path, default=None,
        help="JSON report, markdown beside (default bench/results/gpu-check-TIME)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.mlp_concurrency = [int(v) for v in str(args.mlp_concurrency).split(",") if v]
    args.seq_concurrency = [int(v) for v in str(args.seq_concurrency).split(",") if v]
    if args.quick:
        args.duration, args.warmup = 1.0, 0.3
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)  # fmt: skip
    started = time.monotonic()
    check = Check(args)
    check.run()
    return check.finish(started)


if __name__ == "__main__":
    sys.exit(main())
