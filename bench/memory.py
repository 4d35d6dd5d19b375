"""Server memory under hostile and heavy requests: resident set size of a real service
process before, at peak and after each scenario, printed as a table.

    python -m bench.memory --repository model_repository [--root OTHER_CHECKOUT]

`--root` runs the services from another checkout of the project (for a before/after
comparison in one run); the load generator is always this one.

Scenarios (each on a fresh process, classify service):
- oversized: one cnn request of 15 MiB (about 60,000 images as raw FP32)
- wide x12:  12 concurrent mlp requests of 2 MiB each (typed FP32 contents)
- full x12:  12 concurrent clients x 40 requests of max_batch_size rows (cnn), the
             largest legitimate work
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples a process's RSS every 5 ms on a thread; keeps the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _tensor_request(
    name: str, input_name: str, array: np.ndarray, raw: bool
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name=input_name, datatype="FP32", shape=array.shape)
    if raw:
        request.raw_input_contents.append(array.tobytes())
    else:
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


def _send(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, n: int
) -> list[str]:
    codes = []
    for _ in range(n):
        try:
            stub.ModelInfer(request, timeout=60)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
    return codes


def scenario_oversized(stub: pb_grpc.GRPCInferenceServiceStub) -> list[str]:
    images = np.zeros((61_440, 1, 8, 8), np.float32)  # 15 MiB
    return _send(stub, _tensor_request("cnn", "image", images, raw=True), 1)


def scenario_wide(stub: pb_grpc.GRPCInferenceServiceStub) -> list[str]:
    features = np.zeros((65_536, 8), np.float32)  # 2 MiB
    request = _tensor_request("mlp", "features", features, raw=False)
    with ThreadPoolExecutor(12) as pool:
        results = pool.map(lambda _: _send(stub, request, 1), range(12))
    return [c for r in results for c in r]


def scenario_full(stub: pb_grpc.GRPCInferenceServiceStub) -> list[str]:
    images = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    request = _tensor_request("cnn", "image", images, raw=True)
    with ThreadPoolExecutor(12) as pool:
        results = pool.map(lambda _: _send(stub, request, 40), range(12))
    return [c for r in results for c in r]


SCENARIOS: dict[str, Callable[[pb_grpc.GRPCInferenceServiceStub], list[str]]] = {
    "oversized 15 MiB": scenario_oversized,
    "wide 2 MiB x12": scenario_wide,
    "full batches x12": scenario_full,
}


@dataclass(frozen=True)
class Measured:
    before: int  # RSS bytes once SERVING
    peak: int
    after: int  # one second after the scenario
    codes: collections.Counter[str]


def run_scenario(root: Path, repository: Path, name: str) -> Measured:
    port = _free_port()
    command = [
        sys.executable, "-m", "services", "--service", "classify", "--repository",
        str(repository), "--grpc-port", str(port), "--metrics-port", "-1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MiB)]
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("service did not start")
                time.sleep(0.2)
            time.sleep(0.5)
            before = rss_bytes(process.pid)
            sampler = PeakSampler(process.pid)
            codes = SCENARIOS[name](pb_grpc.GRPCInferenceServiceStub(channel))
            time.sleep(1.0)
            peak = sampler.stop()
            after = rss_bytes(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    return Measured(before, peak, after, collections.Counter(codes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="checkout to serve from")
    args = parser.parse_args()
    repository = args.repository.resolve()
    print(f"services from {args.root.name or args.root}; RSS in MB")
    print(f"{'scenario':<20} {'before':>8} {'peak':>8} {'after':>8}  outcomes")
    for name in SCENARIOS:
        r = run_scenario(args.root.resolve(), repository, name)
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r.codes.items()))
        print(
            f"{name:<20} {r.before / 1e6:>8.0f} {r.peak / 1e6:>8.0f} {r.after / 1e6:>8.0f}  {codes}"
        )


if __name__ == "__main__":
    main()
