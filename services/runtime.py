"""ONNX Runtime sessions: provider choice by policy, read-back of the provider in use,
golden check and warm-up. Plain numpy in and out; no protobuf here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from services.errors import ModelLoadError
from services.repository import ModelSpec, sha256_of
from services.settings import DevicePolicy

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Conservative CUDA options: no TF32 so GPU outputs stay within the goldens' tolerance;
# heuristic conv search avoids slow first calls on every new batch shape.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}

_dlls_preloaded = False


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


def requested_providers(policy: DevicePolicy) -> list[str | tuple[str, dict[str, str]]]:
    if policy is DevicePolicy.CPU_ONLY or CUDA not in available_providers():
        return [CPU]
    return [(CUDA, CUDA_OPTIONS), CPU]


@dataclass
class ModelSession:
    """A loaded ONNX Runtime session and the provider it actually runs on."""

    session: ort.InferenceSession
    provider: str
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)  # type: ignore[no-any-return]


def open_session(spec: ModelSpec, policy: DevicePolicy, intra_op_threads: int) -> ModelSession:
    """Create the session; ModelLoadError when the file, checksum or policy says no."""
    if not spec.onnx_file.is_file():
        raise ModelLoadError(f"{spec.onnx_file.name} is missing")
    actual = sha256_of(spec.onnx_file)
    if actual != spec.sha256:
        raise ModelLoadError(
            f"model.onnx sha256 {actual[:12]}... does not match model.json {spec.sha256[:12]}..."
        )
    if policy is DevicePolicy.REQUIRE_GPU and CUDA not in available_providers():
        raise ModelLoadError(
            f"device policy require_gpu, but {CUDA} is not available "
            f"(available: {', '.join(available_providers())})"
        )
    providers = requested_providers(policy)
    if providers[0] != CPU:
        _preload_cuda_libraries()

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads must not spin between our small runs: they would eat the cores
    # that the gRPC event loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(spec.onnx_file), options, providers=providers)
    except Exception as exc:  # ORT raises several types for bad graphs
        raise ModelLoadError(f"ONNX Runtime cannot load model.onnx: {exc}") from exc

    provider = session.get_providers()[0]
    if policy is DevicePolicy.REQUIRE_GPU and provider != CUDA:
        raise ModelLoadError(f"device policy require_gpu, but the session runs on {provider}")
    _check_signature(spec, session)
    return ModelSession(session, provider, tuple(o.name for o in spec.outputs))


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
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            bound = spec.atol + spec.rtol * np.abs(expected.astype(np.float64))
            if not np.all(diff <= bound):
                raise ModelLoadError(
                    f"golden {case.name!r}: output {name!r} differs by up to "
                    f"{float(diff.max()):.3g} (atol {spec.atol}, rtol {spec.rtol}) "
                    f"on {model.provider}"
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
