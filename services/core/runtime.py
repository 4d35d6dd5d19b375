"""ONNX Runtime sessions: provider choice by policy, read-back of the provider in use
(and why a model that may fall back runs on the CPU), golden check and warm-up. Plain
numpy in and out; no protobuf here."""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import onnxruntime as ort

from contract.model import ModelLoadError, ModelSpec, sha256_of, worst
from services.settings import DevicePolicy

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Conservative CUDA options: no TF32 so GPU outputs stay within the goldens' tolerance;
# heuristic conv search avoids slow first calls on every new batch shape.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}

_dlls_preloaded = False


class Fallback(StrEnum):
    """Why a model whose policy allows the CPU runs there instead of on CUDA.

    A bounded label (nnserve_provider_fallback) and ModelConfig parameter. Logged at
    INFO for the CPU build on a machine without a GPU (nothing is lost: the build was
    chosen for it), at WARNING in every other case (a GPU or the GPU build goes unused).
    """

    NOT_IN_BUILD = "cuda_not_in_build"  # this onnxruntime has no CUDA provider (CPU build)
    NO_GPU = "no_gpu"  # the GPU build, but the CUDA driver reports no GPU
    FAILED_TO_LOAD = "cuda_failed_to_load"  # GPU build and a GPU; the provider did not load


_FALLBACK_TEXT = {
    Fallback.NOT_IN_BUILD: "this ONNX Runtime build has no CUDA provider",
    Fallback.NO_GPU: "the CUDA driver reports no GPU",
    Fallback.FAILED_TO_LOAD: "the CUDA provider failed to load (ONNX Runtime's error above "
    "names the missing library)",
}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds cuBLAS/cuDNN from the nvidia-* wheels only once preloaded."""
    global _dlls_preloaded
    if not _dlls_preloaded and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # a missing library shows up as CPU read back below
            log.warning("onnxruntime.preload_dlls failed: %s", exc)
        _dlls_preloaded = True


@functools.cache
def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports (CUDA_VISIBLE_DEVICES applies); 0 without a driver.

    Asked of the driver library itself (the one thing every CUDA stack has), only when a
    model did not get CUDA, to say why.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def fallback_reason(policy: DevicePolicy, provider: str) -> Fallback | None:
    """Why a session runs on `provider` rather than CUDA; None when that is no fallback."""
    if policy is DevicePolicy.CPU_ONLY or provider == CUDA:
        return None
    if CUDA not in available_providers():
        return Fallback.NOT_IN_BUILD
    return Fallback.FAILED_TO_LOAD if cuda_device_count() > 0 else Fallback.NO_GPU


def _report_fallback(spec: ModelSpec, policy: DevicePolicy, reason: Fallback) -> None:
    quiet = reason is Fallback.NOT_IN_BUILD and cuda_device_count() == 0
    hint = "" if quiet or reason is not Fallback.NOT_IN_BUILD else " (install onnxruntime-gpu)"
    log.log(
        logging.INFO if quiet else logging.WARNING,
        "model %s/%d falls back to %s (policy %s): %s: %s%s",
        spec.name, spec.version, CPU, policy.value, reason.value, _FALLBACK_TEXT[reason], hint,
    )  # fmt: skip


def requested_providers(policy: DevicePolicy) -> list[str | tuple[str, dict[str, str]]]:
    if policy is DevicePolicy.CPU_ONLY or CUDA not in available_providers():
        return [CPU]
    return [(CUDA, CUDA_OPTIONS), CPU]


@dataclass
class ModelSession:
    """Loaded ONNX Runtime session(s) and the provider each batch size runs on.

    Usually one session. With the `measure` policy on a GPU machine there are two, and
    batches of at least `gpu_from_batch` rows go to CUDA, smaller ones to the CPU: the
    GPU is never used where it measured slower.
    """

    session: ort.InferenceSession
    provider: str
    output_names: tuple[str, ...]
    gpu_session: ort.InferenceSession | None = None
    gpu_from_batch: int = 0
    placement: dict[str, dict[int, float]] = field(default_factory=dict)  # provider -> rows -> s
    fallback_reason: Fallback | None = None  # set when the policy allowed CUDA but it is unused

    def provider_for(self, rows: int) -> str:
        if self.gpu_session is not None and rows >= self.gpu_from_batch:
            return CUDA
        return self.provider

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        if self.gpu_session is not None and rows >= self.gpu_from_batch:
            return _run_bound(self.gpu_session, feeds, self.output_names)
        if self.provider == CUDA:
            return _run_bound(self.session, feeds, self.output_names)
        return self.session.run(self.output_names, feeds)  # type: ignore[no-any-return]

    @property
    def providers(self) -> tuple[str, ...]:
        return (self.provider, CUDA) if self.gpu_session is not None else (self.provider,)


def _run_bound(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: tuple[str, ...]
) -> list[np.ndarray]:
    """CUDA: IO binding keeps outputs on the device until one copy back at the end."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for name in outputs:
        binding.bind_output(name, "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()  # type: ignore[no-any-return]


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads must not spin between our small runs: they would eat the cores
    # that the gRPC event loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _create(
    spec: ModelSpec, providers: list[str | tuple[str, dict[str, str]]], intra_op_threads: int
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(spec.onnx_file), _session_options(intra_op_threads), providers=providers
        )
    except Exception as exc:  # ORT raises several types for bad graphs
        raise ModelLoadError(f"ONNX Runtime cannot load {spec.onnx_file.name}: {exc}") from exc


def open_session(
    spec: ModelSpec,
    policy: DevicePolicy,
    intra_op_threads: int,
    batch_sizes: tuple[int, ...] = (1,),
) -> ModelSession:
    """Create the session(s); ModelLoadError when the file, checksum or policy says no."""
    if not spec.onnx_file.is_file():
        raise ModelLoadError(f"{spec.onnx_file.name} is missing")
    actual = sha256_of(spec.onnx_file)
    if actual != spec.sha256:
        raise ModelLoadError(
            f"{spec.onnx_file.name} sha256 {actual[:12]}... does not match model.json "
            f"{spec.sha256[:12]}..."
        )
    if policy is DevicePolicy.REQUIRE_GPU and CUDA not in available_providers():
        raise ModelLoadError(
            f"device policy require_gpu, but {CUDA} is not available "
            f"(available: {', '.join(available_providers())})"
        )
    if policy is DevicePolicy.MEASURE:
        return _measured(spec, intra_op_threads, batch_sizes)
    providers = requested_providers(policy)
    if providers[0] != CPU:
        _preload_cuda_libraries()
    session = _create(spec, providers, intra_op_threads)
    provider = session.get_providers()[0]
    reason = fallback_reason(policy, provider)
    if policy is DevicePolicy.REQUIRE_GPU and reason is not None:
        raise ModelLoadError(
            f"device policy require_gpu, but the session runs on {provider} "
            f"({reason.value}: {_FALLBACK_TEXT[reason]})"
        )
    _check_signature(spec, session)
    if reason is not None:
        _report_fallback(spec, policy, reason)
    model = ModelSession(session, provider, tuple(o.name for o in spec.outputs))
    model.fallback_reason = reason
    return model


def _time_run(
    run: Callable[[dict[str, np.ndarray]], object], feeds: dict[str, np.ndarray]
) -> float:
    """Median of a few runs after one warm-up (first runs allocate and pick kernels)."""
    run(feeds)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        run(feeds)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def _measured(spec: ModelSpec, intra_op_threads: int, batch_sizes: tuple[int, ...]) -> ModelSession:
    """Run the model on each available provider at the expected batch sizes; route each
    batch size to the faster one. The numbers are kept for metadata and metrics."""
    outputs = tuple(o.name for o in spec.outputs)
    cpu = _create(spec, [CPU], intra_op_threads)
    _check_signature(spec, cpu)
    model = ModelSession(cpu, CPU, outputs)
    if not spec.goldens:
        return model
    gpu = None
    if CUDA in available_providers():
        _preload_cuda_libraries()
        gpu = _create(spec, [(CUDA, CUDA_OPTIONS), CPU], intra_op_threads)
    model.fallback_reason = fallback_reason(
        DevicePolicy.MEASURE, gpu.get_providers()[0] if gpu is not None else CPU
    )
    if model.fallback_reason is not None:
        _report_fallback(spec, DevicePolicy.MEASURE, model.fallback_reason)
    sample = spec.goldens[0].inputs
    sizes = sorted(set(batch_sizes))

    def feeds(n: int) -> dict[str, np.ndarray]:
        return {k: np.repeat(v[:1], n, axis=0) for k, v in sample.items()}

    model.placement[CPU] = {n: _time_run(lambda f: cpu.run(outputs, f), feeds(n)) for n in sizes}
    if gpu is None or model.fallback_reason is not None:
        return model  # measured placement stays on the CPU
    model.placement[CUDA] = {
        n: _time_run(lambda f: _run_bound(gpu, f, outputs), feeds(n)) for n in sizes
    }
    faster = [n for n in sizes if model.placement[CUDA][n] < model.placement[CPU][n]]
    # Route to the GPU from the smallest size where it wins and keeps winning above it.
    for i, n in enumerate(sizes):
        if all(m in faster for m in sizes[i:]):
            model.gpu_session, model.gpu_from_batch = gpu, n
            break
    return model


def _check_signature(spec: ModelSpec, session: ort.InferenceSession) -> None:
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    declared_inputs = {t.name for t in spec.inputs}
    declared_outputs = {t.name for t in spec.outputs}
    if graph_inputs != declared_inputs:
        raise ModelLoadError(
            f"graph inputs {sorted(graph_inputs)} differ from model.json {sorted(declared_inputs)}"
        )
    if not declared_outputs <= graph_outputs:
        raise ModelLoadError(
            f"model.json outputs {sorted(declared_outputs - graph_outputs)} are not in the graph"
        )


def check_goldens(spec: ModelSpec, model: ModelSession) -> None:
    """Run every golden case; ModelLoadError names the first output that differs."""
    if not spec.goldens:
        raise ModelLoadError("model.json has no golden cases; cannot verify the model")
    for case in spec.goldens:
        results = dict(zip(model.output_names, model.run(case.inputs), strict=True))
        for name, expected in case.outputs.items():
            got = results[name]
            if got.shape != expected.shape:
                raise ModelLoadError(
                    f"golden {case.name!r}: output {name!r} has shape {list(got.shape)}, "
                    f"expected {list(expected.shape)}"
                )
            excess, diff, index = worst(got, expected, spec.atol, spec.rtol)
            if excess > 0:
                raise ModelLoadError(
                    f"golden {case.name!r}: output {name!r} differs by {diff:.3g} at index "
                    f"{list(index)} (atol {spec.atol}, rtol {spec.rtol}) on {model.provider}"
                )


def warm_up(spec: ModelSpec, model: ModelSession, batch_sizes: tuple[int, ...]) -> float:
    """Run the first golden case tiled to each batch size; returns seconds spent."""
    if not spec.goldens:
        return 0.0
    start = time.perf_counter()
    case = spec.goldens[0]
    for n in batch_sizes:
        feeds = {k: np.repeat(v[:1], n, axis=0) for k, v in case.inputs.items()}
        model.run(feeds)
    return time.perf_counter() - start


def single_row_seconds(spec: ModelSpec, model: ModelSession, runs: int = 21) -> float:
    """Median ONNX Runtime time of one single-row request (the first golden row), after
    warm-up (ModelConfig reports it as single_row_compute_us)."""
    if not spec.goldens:
        return float("inf")
    feeds = {k: np.ascontiguousarray(v[:1]) for k, v in spec.goldens[0].inputs.items()}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(feeds)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))
