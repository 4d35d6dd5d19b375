"""python -m bench.hostile_soak: a server process under mixed hostile traffic for a while.

Starts `python -m services` (port 0, NNSERVE_PORTS_FILE) with mlp and lstm, then runs,
each on its own thread and connection, until --duration is over:

- valid ModelInfer calls (mlp goldens), whose answers are checked;
- deadline storms: Sequence calls (lstm) with a 2 ms deadline;
- gzip bombs: --bomb-mib MiB of zeros compressed by the grpcio client, as a ModelInfer
  request and inside a ModelStreamInfer stream;
- undecodable messages: random bytes to ModelInfer, Classify and Stream;
- session churn: Stream sessions opened (or resumed), fed, then closed, released
  (resumable) or abandoned (the client cancels mid-call); from one address, so the
  per-client session cap shows up as RESOURCE_EXHAUSTED once enough are held;
- health checks every 0.2 s, each timed.

It samples the server's resident memory every --sample-seconds (psutil), then sends
SIGTERM and waits for the drain. It prints a table, writes JSON (--out), and exits 1 if
a health check took --health-limit-ms or more, any call ended INTERNAL or UNKNOWN, or
the server did not exit 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract.model import NUMPY_TO_V2, read_spec
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc

ROOT = Path(__file__).resolve().parent.parent
BAD_CODES = ("INTERNAL", "UNKNOWN")
TRAFFIC = ("valid", "deadlines", "bombs", "undecodable", "sessions")  # health always runs
MiB = 1 << 20


@dataclass
class Tally:
    """Outcomes of one kind of traffic, by status code name."""

    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong_answers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, code: str) -> None:
        with self.lock:
            self.codes[code] += 1


def _code(call: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """The status code name of `call(*args, **kwargs)` (OK when it returns)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code().name  # type: ignore[attr-defined, no-any-return]
    return "OK"


def infer_request(name: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name)
    for key, value in inputs.items():
        request.inputs.add(name=key, datatype=NUMPY_TO_V2[value.dtype], shape=value.shape)
        request.raw_input_contents.append(value.tobytes())
    return request


# ------------------------------------------------------------------ the server


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path


def start_server(repository: Path, workdir: Path, extra: list[str]) -> Server:
    ports_file = workdir / "ports.json"
    log_path = workdir / "server.log"
    command = [
        sys.executable, "-m", "services", "--repository", str(repository),
        "--models", '["mlp", "lstm"]', "--grpc-port", "0", "--metrics-port", "0",
        "--ports-file", str(ports_file), *extra,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ports_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start; see {log_path}")
        time.sleep(0.05)
    ports = json.loads(ports_file.read_text())
    address = f"127.0.0.1:{ports['grpc_port']}"
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server never served; see {log_path}")
            time.sleep(0.1)
    return Server(process, address, log_path)


# ------------------------------------------------------------------ traffic


class Soak:
    def __init__(self, server: Server, repository: Path, args: argparse.Namespace) -> None:
        self.server = server
        self.args = args
        self.stop = threading.Event()
        self.tallies: dict[str, Tally] = collections.defaultdict(Tally)
        self.health_ms: list[float] = []
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.started = time.monotonic()
        self.rng = random.Random(7)
        mlp = read_spec(repository, "mlp", 1)
        self.mlp_inputs = dict(mlp.goldens[0].inputs)
        lstm = read_spec(repository, "lstm", 1)
        assert lstm.sequence is not None
        self.vocabulary = len(lstm.sequence.vocabulary)

    def _loop(self, pause: float, step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stop.is_set():
                step()
                self.stop.wait(pause)

        return run

    def valid(self, stub: pb_grpc.GRPCInferenceServiceStub) -> Callable[[], None]:
        request = infer_request("mlp", self.mlp_inputs)
        expected: list[np.ndarray] = []

        def step() -> None:
            try:
                answer = stub.ModelInfer(request, timeout=5)
            except grpc.RpcError as exc:
                self.tallies["valid ModelInfer"].add(exc.code().name)  # type: ignore[attr-defined]
                return
            self.tallies["valid ModelInfer"].add("OK")
            got = np.frombuffer(answer.raw_output_contents[0], np.float32)
            if not expected:
                expected.append(got)
            elif not np.allclose(got, expected[0], rtol=1e-5, atol=1e-6):
                self.tallies["valid ModelInfer"].wrong_answers += 1

        return step

    def deadline_storm(self, stub: npb_grpc.PredictorStub) -> Callable[[], None]:
        ids = [2 + i % (self.vocabulary - 2) for i in range(40)]
        request = npb.SequenceRequest(
            model_name="lstm", sequences=[npb.SequenceInput(token_ids=npb.TokenIds(ids=ids))] * 8
        )

        def step() -> None:
            calls = [stub.Sequence.future(request, timeout=0.002) for _ in range(10)]
            for call in calls:
                self.tallies["Sequence, 2 ms deadline"].add(_code(call.result))

        return step

    def bombs(self, channel: grpc.Channel) -> Callable[[], None]:
        bomb = bytes(self.args.bomb_mib * MiB)
        unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        valid = infer_request("mlp", self.mlp_inputs).SerializeToString()
        turn = [0]

        def step() -> None:
            turn[0] += 1
            gzip = grpc.Compression.Gzip
            if turn[0] % 2:
                code = _code(unary, bomb, timeout=30, compression=gzip)
                self.tallies["gzip bomb, ModelInfer"].add(code)
            else:
                messages = iter([valid, bomb])
                code = _code(lambda: list(stream(messages, timeout=30, compression=gzip)))
                self.tallies["gzip bomb, in ModelStreamInfer"].add(code)

        return step

    def undecodable(self, channel: grpc.Channel) -> Callable[[], None]:
        paths = (
            "/inference.GRPCInferenceService/ModelInfer",
            "/nnserve.v1.Predictor/Classify",
        )
        stream = channel.stream_stream("/nnserve.v1.Predictor/Stream")

        unaries = [channel.unary_unary(path) for path in paths]

        def step() -> None:
            junk = self.rng.randbytes(self.rng.randint(1, 4096))
            for call in unaries:
                self.tallies["undecodable"].add(_code(call, junk, timeout=5))
            self.tallies["undecodable"].add(_code(lambda: list(stream(iter([junk]), timeout=5))))

        return step

    def sessions(self, stub: npb_grpc.PredictorStub) -> Callable[[], None]:
        resumable: list[str] = []

        def events() -> npb.StreamRequest:
            ids = [self.rng.randrange(2, self.vocabulary) for _ in range(self.rng.randint(1, 8))]
            return npb.StreamRequest(token_ids=npb.TokenIds(ids=ids))

        def step() -> None:
            ending = self.rng.choice(("close", "abandon", "release"))
            if resumable and self.rng.random() < 0.3:
                first = npb.StreamRequest(session_id=resumable.pop())
            else:
                first = npb.StreamRequest(model_name="lstm")
            messages = [first, events(), events()]
            if ending == "close":
                messages.append(npb.StreamRequest(close=True))
            gone = threading.Event()

            def send() -> Iterator[npb.StreamRequest]:
                yield from messages
                if ending == "abandon":
                    gone.wait(10)  # never half-closes: the client goes away mid-call

            call = stub.Stream(send(), timeout=10)
            try:
                answers = []
                for answer in call:
                    answers.append(answer)
                    if ending == "abandon" and len(answers) == len(messages):
                        call.cancel()
                self.tallies["session churn"].add("OK")
                if ending == "release" and answers and not answers[-1].closed:
                    resumable.append(answers[0].session_id)
                    del resumable[:-50]  # a bounded list: older ones expire on the server
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                cancelled = ending == "abandon" and code is grpc.StatusCode.CANCELLED
                self.tallies["session churn"].add("OK (abandoned)" if cancelled else code.name)
            finally:
                gone.set()

        return step

    def health(self, stub: health_pb2_grpc.HealthStub) -> Callable[[], None]:
        def step() -> None:
            start = time.perf_counter()
            code = _code(stub.Check, health_pb2.HealthCheckRequest(), timeout=5)
            self.health_ms.append((time.perf_counter() - start) * 1e3)
            self.tallies["health Check"].add(code)

        return step

    def sample(self, process: psutil.Process) -> Callable[[], None]:
        def step() -> None:
            rss = process.memory_info().rss / MiB
            self.rss.append((round(time.monotonic() - self.started, 1), round(rss, 1)))

        return step

    def run(self) -> None:
        address = self.server.address
        channels = [grpc.insecure_channel(address) for _ in range(6)]
        kinds: dict[str, tuple[float, Callable[[], None]]] = {
            "valid": (0.005, self.valid(pb_grpc.GRPCInferenceServiceStub(channels[0]))),
            "deadlines": (0.05, self.deadline_storm(npb_grpc.PredictorStub(channels[1]))),
            "bombs": (self.args.bomb_pause, self.bombs(channels[2])),
            "undecodable": (0.05, self.undecodable(channels[3])),
            "sessions": (0.02, self.sessions(npb_grpc.PredictorStub(channels[4]))),
        }
        traffic = [kinds[kind] for kind in self.args.traffic]
        traffic += [
            (0.2, self.health(health_pb2_grpc.HealthStub(channels[5]))),
            (self.args.sample_seconds, self.sample(psutil.Process(self.server.process.pid))),
        ]
        threads = [threading.Thread(target=self._loop(p, s), daemon=True) for p, s in traffic]
        self.started = time.monotonic()
        for thread in threads:
            thread.start()
        self.stop.wait(self.args.duration)
        self.stop.set()
        for thread in threads:
            thread.join(60)
        for channel in channels:
            channel.close()


# ------------------------------------------------------------------ report


def report(soak: Soak, exit_code: int | None, drain_s: float) -> dict[str, Any]:
    health = sorted(soak.health_ms)

    def pct(q: float) -> float:
        return round(health[min(len(health) - 1, int(q * len(health)))], 2) if health else 0.0

    bad = {
        kind: {c: n for c, n in tally.codes.items() if c in BAD_CODES}
        for kind, tally in soak.tallies.items()
    }
    rss = [mb for _, mb in soak.rss]
    doc: dict[str, Any] = {
        "duration_s": soak.args.duration,
        "traffic": {
            kind: {"calls": sum(t.codes.values()), "codes": dict(t.codes)}
            | ({"wrong_answers": t.wrong_answers} if t.wrong_answers else {})
            for kind, t in sorted(soak.tallies.items())
        },
        "health_ms": {"count": len(health), "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "rss_mb": soak.rss,
        "rss_growth_mb": round(rss[-1] - rss[0], 1) if rss else None,
        "internal_or_unknown": {k: v for k, v in bad.items() if v},
        "server_exit": exit_code,
        "drain_s": round(drain_s, 2),
    }
    limit = soak.args.health_limit_ms
    doc["ok"] = (
        not doc["internal_or_unknown"]
        and bool(health)
        and health[-1] < limit
        and exit_code == 0
        and not any(t.wrong_answers for t in soak.tallies.values())
    )
    width = max(len(k) for k in doc["traffic"]) if doc["traffic"] else 10
    print(f"\n{'traffic':<{width}}  {'calls':>7}  codes")
    for kind, row in doc["traffic"].items():
        codes = ", ".join(f"{c} {n}" for c, n in sorted(row["codes"].items()))
        print(f"{kind:<{width}}  {row['calls']:>7}  {codes}")
    h = doc["health_ms"]
    print(
        f"\nhealth Check: {h['count']} checks, p50 {h['p50']} ms, p99 {h['p99']} ms, "
        f"max {h['max']} ms (limit {limit:g} ms)"
    )
    print("server RSS (s: MB): " + ", ".join(f"{t:g}: {mb:g}" for t, mb in soak.rss))
    print(f"RSS growth first to last sample: {doc['rss_growth_mb']} MB")
    print(f"INTERNAL/UNKNOWN: {doc['internal_or_unknown'] or 'none'}")
    print(f"server exit {exit_code} after a {drain_s:.2f} s drain; {'OK' if doc['ok'] else 'FAIL'}")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_soak", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sample period")
    parser.add_argument("--bomb-mib", type=int, default=64, help="zeros per gzip bomb")
    parser.add_argument("--bomb-pause", type=float, default=1.0, help="seconds between bombs")
    parser.add_argument("--health-limit-ms", type=float, default=100.0)
    parser.add_argument("--frontend", choices=("aio", "native"), default="aio")
    parser.add_argument(
        "--traffic",
        type=lambda text: [k for k in text.split(",") if k],
        default=list(TRAFFIC),
        help=f"comma-separated kinds to run (default all: {','.join(TRAFFIC)})",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "hostile_soak.json"
    )
    args = parser.parse_args(argv)
    if unknown := set(args.traffic) - set(TRAFFIC):
        parser.error(f"--traffic: unknown kinds {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="nnserve-soak-") as workdir:
        server = start_server(args.repository, Path(workdir), ["--frontend", args.frontend])
        try:
            soak = Soak(server, args.repository, args)
            soak.run()
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                exit_code: int | None = server.process.wait(60)
            except subprocess.TimeoutExpired:
                exit_code = None
            drain_s = time.monotonic() - signalled
        finally:
            if server.process.poll() is None:
                server.process.kill()  # our own process, by pid
                server.process.wait(10)
        doc = report(soak, exit_code, drain_s)
        if not doc["ok"]:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            print(f"\nserver log (tail):\n{tail}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {os.path.relpath(args.out)}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
