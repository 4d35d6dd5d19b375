"""End-to-end observability: both services with a known load, scraped by a real Prometheus
that runs the stack's recording and alert rules; what Prometheus reports must match what
the clients saw.

The module starts its own classify and sequence servers (fresh registries, so every
counter starts at zero and counts are exact) and a Prometheus (tests/support/prometheus_server.py)
scraping both metrics ports every second. Traffic goes through both APIs (KServe v2
ModelInfer with raw_input_contents, nnserve.v1 Classify / Sequence) for all five models,
with deliberate client errors (INVALID_ARGUMENT, NOT_FOUND) and one server-side error
(UNAVAILABLE while draining) per round.

Counters appear on their first request, and rate() needs two samples of a series, so the
traffic comes in two phases with a scrape between them: one round, then two more. Every
series then exists in the scrape after phase 1 and grows by phase 2, and the 1m recording
rules have values a few seconds later; the tests read them from a rule evaluation after
Prometheus has scraped all the traffic. Besides counts, latency quantiles, readiness and
the provider, this checks that only the server-side error goes into the paging error
ratio (and makes NnserveErrorRatioHigh pending), while the client errors do not.

Needs `prometheus` and `promtool` (Debian: apt-get install prometheus; `make test`
installs it where it can): without them the tests fail, or skip with
NNSERVE_TEST_ALLOW_MISSING_TOOLS=1.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.core.dataplane import UNKNOWN_MODEL
from services.ops.metrics import LATENCY_BUCKETS
from tests.support.inference import infer_request
from tests.support.metrics import scrape
from tests.support.models import (
    ALL_MODELS,
    CLASSIFY_MODELS,
    SEQUENCE_MODELS,
    golden_inputs,
    model_json,
)
from tests.support.prometheus_server import PrometheusServer
from tests.support.servers import RunningServer, make_settings, running_server
from tests.support.tools import require_binary

KSERVE = "inference.GRPCInferenceService"
PREDICTOR = "nnserve.v1.Predictor"
# The codes NnserveErrorRatioHigh pages on (deploy/prometheus/rules/recording.yml).
SERVER_SIDE = {
    "INTERNAL",
    "UNKNOWN",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "DATA_LOSS",
}
PHASE_1_ROUNDS = 1
PHASE_2_ROUNDS = 2
ROUNDS = PHASE_1_ROUNDS + PHASE_2_ROUNDS
OK_PER_API = 2  # successful requests per model, API and round
SCRAPE_TIMEOUT = 15.0  # seconds for Prometheus to show what was sent (scrapes every 1s)


@dataclass(frozen=True)
class Call:
    """One RPC of a round and what it must be counted as."""

    server: str  # "classify" | "sequence"
    model: str  # the `model` label it is counted under
    grpc_service: str
    method: str
    code: str
    send: Callable[[float], Any]  # timeout -> response


@dataclass
class Observed:
    """What the clients sent and saw, to compare with Prometheus."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # model, method, code
    handled: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # service, method, code
    max_latency: dict[str, float] = field(default_factory=dict)  # model -> seconds


@dataclass
class Stack:
    prom: PrometheusServer
    servers: dict[str, RunningServer]
    observed: Observed
    calls_per_round: int
    repository: Path
    final_seen: float  # Unix time by which Prometheus had scraped all the traffic

    def recorded(self, names: list[str], models: set[str]) -> dict[str, dict[str, float]]:
        """Recorded series by name and model, evaluated on all the traffic: every model
        present, from one rule evaluation after the last counts were scraped (rules of a
        group share their evaluation time, which the query asks for)."""
        stamps: list[float] = []
        for name in names:
            result = self.prom.wait_for(
                f"timestamp({name})",
                lambda r: (
                    # Extra graphs batch under "<model>:explain" (docs/metrics.md).
                    {s["metric"]["model"] for s in r if ":" not in s["metric"]["model"]} == models
                    and all(float(s["value"][1]) > self.final_seen for s in r)
                ),
                timeout=SCRAPE_TIMEOUT,
            )
            stamps += [float(s["value"][1]) for s in result]
        at = min(stamps)
        return {
            name: {s["metric"]["model"]: float(s["value"][1]) for s in self.prom.query(name, at)}
            for name in names
        }


# ------------------------------------------------------------------------ traffic


def build_round(
    servers: dict[str, RunningServer], channels: dict[str, grpc.Channel], repository: Path
) -> list[Call]:
    """The calls of one round: OK_PER_API successes per model and API, plus errors."""
    calls: list[Call] = []
    for server in ("classify", "sequence"):
        kserve = pb_grpc.GRPCInferenceServiceStub(channels[server])
        predictor = npb_grpc.PredictorStub(channels[server])
        models = CLASSIFY_MODELS if server == "classify" else SEQUENCE_MODELS
        for name in models:
            inputs = golden_inputs(repository, name)
            v2 = infer_request(name, inputs)  # raw_input_contents
            assert v2.raw_input_contents
            domain_method = "Classify" if server == "classify" else "Sequence"
            domain = domain_request(repository, name, inputs)
            domain_call = getattr(predictor, domain_method)
            for _ in range(OK_PER_API):
                calls.append(
                    Call(server, name, KSERVE, "ModelInfer", "OK", _bind(kserve.ModelInfer, v2))
                )
                calls.append(
                    Call(server, name, PREDICTOR, domain_method, "OK", _bind(domain_call, domain))
                )

    classify_v2 = pb_grpc.GRPCInferenceServiceStub(channels["classify"])
    classify_domain = npb_grpc.PredictorStub(channels["classify"])
    sequence_v2 = pb_grpc.GRPCInferenceServiceStub(channels["sequence"])
    sequence_domain = npb_grpc.PredictorStub(channels["sequence"])

    # Client errors, which must not count against the error objective.
    width = golden_inputs(repository, "mlp")["features"].shape[1]
    wrong_dtype = infer_request("mlp", {"features": np.zeros((1, width), np.float64)})
    empty_classify = npb.ClassifyRequest(model_name="cnn")
    unknown_version = infer_request("perceptron", golden_inputs(repository, "perceptron"))
    unknown_version.model_version = "7"
    unknown_model = infer_request("no_such_model", golden_inputs(repository, "mlp"))
    unknown_token = npb.SequenceRequest(model_name="lstm")
    unknown_token.sequences.add(tokens=npb.TokenStrings(tokens=["definitely.not.an.event"]))
    calls += [
        Call("classify", "mlp", KSERVE, "ModelInfer", "INVALID_ARGUMENT",
             _bind(classify_v2.ModelInfer, wrong_dtype)),
        Call("classify", "cnn", PREDICTOR, "Classify", "INVALID_ARGUMENT",
             _bind(classify_domain.Classify, empty_classify)),
        Call("classify", "perceptron", KSERVE, "ModelInfer", "NOT_FOUND",
             _bind(classify_v2.ModelInfer, unknown_version)),
        Call("classify", UNKNOWN_MODEL, KSERVE, "ModelInfer", "NOT_FOUND",
             _bind(classify_v2.ModelInfer, unknown_model)),
        Call("sequence", "lstm", PREDICTOR, "Sequence", "INVALID_ARGUMENT",
             _bind(sequence_domain.Sequence, unknown_token)),
    ]  # fmt: skip

    # A server-side error: the sequence service answers UNAVAILABLE while it drains.
    transformer = infer_request("transformer", golden_inputs(repository, "transformer"))
    state = servers["sequence"].server.state

    def while_draining(timeout: float) -> Any:
        state.draining = True
        try:
            return sequence_v2.ModelInfer(transformer, timeout=timeout)
        finally:
            state.draining = False

    calls.append(
        Call("sequence", "transformer", KSERVE, "ModelInfer", "UNAVAILABLE", while_draining)
    )
    return calls


def domain_request(
    repository: Path, name: str, inputs: dict[str, np.ndarray]
) -> npb.ClassifyRequest | npb.SequenceRequest:
    """The golden inputs as an nnserve.v1 Classify or Sequence request."""
    doc = model_json(repository, name)
    if doc["task"] == "sequence":
        sequence = npb.SequenceRequest(model_name=name)
        for tokens, length in zip(inputs["tokens"], inputs["lengths"], strict=True):
            sequence.sequences.add(token_ids=npb.TokenIds(ids=tokens[:length].tolist()))
        return sequence
    classify = npb.ClassifyRequest(model_name=name)
    if doc["classify"]["kind"] == "image":
        image = doc["classify"]["image"]
        for pixels in inputs["image"]:
            classify.images.add(
                shape=[1, image["height"], image["width"]],
                float_pixels=npb.FloatPixels(values=pixels.ravel().tolist()),
            )
    else:
        for row in inputs["features"]:
            classify.rows.add(values=row.tolist())
    return classify


def _bind(rpc: Callable[..., Any], request: Any) -> Callable[[float], Any]:
    return lambda timeout: rpc(request, timeout=timeout)


def send_round(calls: list[Call], observed: Observed) -> None:
    for call in calls:
        start = time.perf_counter()
        try:
            call.send(30.0)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        elapsed = time.perf_counter() - start
        assert code == call.code, f"{call.model} {call.method}: expected {call.code}, got {code}"
        observed.requests[(call.model, call.method, call.code)] += 1
        observed.handled[(call.grpc_service, call.method, call.code)] += 1
        observed.max_latency[call.model] = max(elapsed, observed.max_latency.get(call.model, 0.0))


# -------------------------------------------------------------------- Prometheus


def vector(prom: PrometheusServer, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Instant vector as {(label values...): value}."""
    return {
        tuple(s["metric"].get(label, "") for label in labels): float(s["value"][1])
        for s in prom.query(expr)
    }


def eventually(
    prom: PrometheusServer,
    expr: str,
    labels: tuple[str, ...],
    expected: Mapping[Any, float],
    timeout: float = SCRAPE_TIMEOUT,
) -> dict[tuple[str, ...], float]:
    """Polls until the vector equals `expected`; returns the last one either way, so the
    caller's assert shows the difference."""
    deadline = time.monotonic() + timeout
    while True:
        got = vector(prom, expr, *labels)
        if got == expected or time.monotonic() >= deadline:
            return got
        time.sleep(0.25)


# ------------------------------------------------------------------------- fixture


@pytest.fixture(scope="session")  # session: set up before the models are trained
def promtool() -> str:
    """promtool's path; needs promtool and prometheus (see tests/support/prometheus_server.py)."""
    require_binary("prometheus")
    return require_binary("promtool")


@pytest.fixture(scope="module")
def stack(promtool: str, model_repository: Path) -> Iterator[Stack]:
    with ExitStack() as exits:
        servers = {
            service: exits.enter_context(
                running_server(
                    # cpu_only: the provider label is known on any machine.
                    make_settings(model_repository, service=service, device_policy="cpu_only")
                )
            )
            for service in ("classify", "sequence")
        }
        channels = {}
        for service, server in servers.items():
            channels[service] = server.channel()
            exits.callback(channels[service].close)
        targets = [
            (f"127.0.0.1:{server.server.metrics_port}", {"service": service})
            for service, server in servers.items()
        ]
        prom = exits.enter_context(PrometheusServer(targets))
        prom.wait_for_targets_up(timeout=20)

        calls = build_round(servers, channels, model_repository)
        observed = Observed()
        for _ in range(PHASE_1_ROUNDS):
            send_round(calls, observed)
        phase_1 = {
            (server,): float(n * PHASE_1_ROUNDS)
            for server, n in Counter(c.server for c in calls).items()
        }
        seen = eventually(prom, "sum by (service) (nnserve_requests_total)", ("service",), phase_1)
        assert seen == phase_1, f"phase 1 never showed in Prometheus\n{prom.log_tail()}"
        for _ in range(PHASE_2_ROUNDS):
            send_round(calls, observed)
        final = {
            (server,): float(n * ROUNDS) for server, n in Counter(c.server for c in calls).items()
        }
        seen = eventually(prom, "sum by (service) (nnserve_requests_total)", ("service",), final)
        assert seen == final, f"phase 2 never showed in Prometheus\n{prom.log_tail()}"
        yield Stack(prom, servers, observed, len(calls), model_repository, time.time())


# --------------------------------------------------------------------------- tests


def test_both_targets_are_up(stack: Stack) -> None:
    expected = {
        (f"127.0.0.1:{server.server.metrics_port}", service): 1.0
        for service, server in stack.servers.items()
    }
    assert vector(stack.prom, 'up{job="nnserve"}', "instance", "service") == expected


def test_request_counts_match_what_was_sent(stack: Stack) -> None:
    expected = {key: float(n) for key, n in stack.observed.requests.items()}
    assert sum(expected.values()) == stack.calls_per_round * ROUNDS
    got = eventually(
        stack.prom,
        'sum by (model, method, code) (nnserve_requests_total{job="nnserve"})',
        ("model", "method", "code"),
        expected,
    )
    assert got == expected

    per_model = Counter[str]()
    for (model, _, _), n in stack.observed.requests.items():
        per_model[model] += n
    got_per_model = vector(stack.prom, "sum by (model) (nnserve_requests_total)", "model")
    assert got_per_model == {(m,): float(n) for m, n in per_model.items()}
    assert {m for (m,) in got_per_model} == {*ALL_MODELS, UNKNOWN_MODEL}


def test_error_counts_by_code(stack: Stack) -> None:
    expected: Counter[tuple[str, str]] = Counter()
    for (model, _, code), n in stack.observed.requests.items():
        if code != "OK":
            expected[(model, code)] += n
    assert expected == {
        ("mlp", "INVALID_ARGUMENT"): ROUNDS,
        ("cnn", "INVALID_ARGUMENT"): ROUNDS,
        ("lstm", "INVALID_ARGUMENT"): ROUNDS,
        ("perceptron", "NOT_FOUND"): ROUNDS,
        (UNKNOWN_MODEL, "NOT_FOUND"): ROUNDS,
        ("transformer", "UNAVAILABLE"): ROUNDS,
    }
    got = eventually(
        stack.prom,
        'sum by (model, code) (nnserve_requests_total{code!="OK"})',
        ("model", "code"),
        {key: float(n) for key, n in expected.items()},
    )
    assert got == {key: float(n) for key, n in expected.items()}


def test_error_ratio_rules_separate_server_side_and_client_errors(stack: Stack) -> None:
    """nnserve:requests:error_ratio_1m counts server-side codes only (transformer's
    UNAVAILABLE); client errors go to client_error_ratio_1m.

    Which ratios are zero, and the 1.0 of a model with nothing but errors, are exact. The
    other values are ratios of rate()s, which Prometheus extrapolates per series from its
    first and last sample; a scrape that lands in the middle of the first round gives the
    series of one model different first samples, so those are compared loosely."""
    totals: Counter[str] = Counter()
    server_side: Counter[str] = Counter()
    client: Counter[str] = Counter()
    for (model, _, code), n in stack.observed.requests.items():
        totals[model] += n
        if code in SERVER_SIDE:
            server_side[model] += n
        elif code != "OK":
            client[model] += n
    models = {*ALL_MODELS, UNKNOWN_MODEL}
    recorded = stack.recorded(
        ["nnserve:requests:error_ratio_1m", "nnserve:requests:client_error_ratio_1m"], models
    )
    server_ratio = recorded["nnserve:requests:error_ratio_1m"]
    client_ratio = recorded["nnserve:requests:client_error_ratio_1m"]
    for model in models:
        want_server = server_side[model] / totals[model]
        want_client = client[model] / totals[model]
        assert server_ratio[model] == pytest.approx(want_server, rel=0.5, abs=0), model
        assert client_ratio[model] == pytest.approx(want_client, rel=0.5, abs=0), model
    assert server_ratio["transformer"] > 0
    assert all(server_ratio[m] == 0 for m in models - {"transformer"}), server_ratio
    assert client_ratio["transformer"] == 0
    assert client_ratio[UNKNOWN_MODEL] == 1.0


def test_grpc_server_metrics_agree(stack: Stack) -> None:
    labels = ("grpc_service", "grpc_method", "grpc_code")
    expected = {key: float(n) for key, n in stack.observed.handled.items()}
    got = eventually(
        stack.prom,
        'sum by (grpc_service, grpc_method, grpc_code) (grpc_server_handled_total{job="nnserve"})',
        labels,
        expected,
    )
    assert got == expected

    started: Counter[tuple[str, str]] = Counter()
    for (service, method, _), n in stack.observed.handled.items():
        started[(service, method)] += n
    assert vector(
        stack.prom,
        "sum by (grpc_service, grpc_method) (grpc_server_started_total)",
        "grpc_service",
        "grpc_method",
    ) == {key: float(n) for key, n in started.items()}

    # nnserve_requests_total and grpc_server_handled_total count the same RPCs.
    ours = vector(stack.prom, "sum by (method, code) (nnserve_requests_total)", "method", "code")
    grpc_side = vector(
        stack.prom,
        'sum by (grpc_method, grpc_code) (grpc_server_handled_total{grpc_type="unary"})',
        "grpc_method",
        "grpc_code",
    )
    assert ours == grpc_side


@pytest.mark.parametrize("window", ["1m", "5m"])
def test_latency_recording_rules_for_every_model(stack: Stack, window: str) -> None:
    names = [f"nnserve:request_duration_seconds:{q}_{window}" for q in ("p50", "p95", "p99")]
    names += [
        f"nnserve:{phase}:p99_{window}" for phase in ("queue_wait_seconds", "compute_seconds")
    ]
    recorded = stack.recorded(names, set(ALL_MODELS))
    for model in ALL_MODELS:
        p50, p95, p99 = (recorded[name][model] for name in names[:3])
        assert 0 < p50 <= p95 <= p99, (model, p50, p95, p99)
        # The server measures less than the client's round trip, so p99 cannot lie above
        # the bucket that holds the slowest request the client saw.
        slowest = stack.observed.max_latency[model]
        bound = next((b for b in LATENCY_BUCKETS if b >= slowest), math.inf)
        assert p99 <= bound, (model, p99, slowest)
        for name in names[3:]:  # queue wait and compute: parts of the request
            assert 0 <= recorded[name][model] <= bound, (name, model, recorded[name][model])


def test_models_ready_on_cpu(stack: Stack) -> None:
    ready = vector(stack.prom, "nnserve_model_ready", "model", "version")
    assert ready == {(m, "1"): 1.0 for m in ALL_MODELS}

    info = vector(stack.prom, "nnserve_model_info", "model", "family", "task", "provider")
    expected = {}
    for name in ALL_MODELS:
        doc = model_json(stack.repository, name)
        expected[(name, doc["family"], doc["task"], "CPUExecutionProvider")] = 1.0
    assert info == expected

    # Every model is on the service that should serve it.
    service = vector(
        stack.prom, "max by (model, service) (nnserve_model_ready)", "model", "service"
    )
    assert {m for m, s in service if s == "classify"} == set(CLASSIFY_MODELS)
    assert {m for m, s in service if s == "sequence"} == set(SEQUENCE_MODELS)


def test_error_alert_goes_pending_for_server_side_errors_only(stack: Stack) -> None:
    """NnserveErrorRatioHigh (for: 5m) goes pending as soon as its expression holds: for
    transformer (a third of its requests UNAVAILABLE), never for the models with client
    errors only, though a third or all of their requests failed."""
    alerts = stack.prom.wait_for(
        'ALERTS{alertname="NnserveErrorRatioHigh"}',
        lambda r: any(s["metric"].get("model") == "transformer" for s in r),
        timeout=SCRAPE_TIMEOUT,
    )
    assert {s["metric"]["model"] for s in alerts} == {"transformer"}
    assert {s["metric"]["alertstate"] for s in alerts} == {"pending"}
    others = {a["labels"]["alertname"] for a in stack.prom.alerts()}
    assert not others & {"NnserveTargetDown", "NnserveModelNotReady"}, others


@pytest.mark.parametrize("service", ["classify", "sequence"])
def test_promtool_check_metrics(stack: Stack, promtool: str, service: str) -> None:
    server = stack.servers[service]
    text = scrape(server)
    assert "nnserve_request_duration_seconds_bucket" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
