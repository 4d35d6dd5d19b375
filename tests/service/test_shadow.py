"""Shadow versions (services/core/shadow.py, nnserve.v1.Routing): a copy of every request
the serving version answers runs on the shadow version and the scores are compared, in
DescribeModel and nnserve_shadow_* metrics; SetShadow and PromoteShadow at runtime.

Real servers on copies of the exported models: mlp version 2 is mlp version 1 again (the
comparison must find full agreement and no difference), mlp version 3 is the perceptron
renamed (same features and labels, other weights: the comparison must find what the
client finds by asking both versions itself)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from nnserve_client import NNServeClient
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.core.shadow import WINDOW_ROWS, ShadowComparison
from services.ops.metrics import Metrics
from tests.support.cli import client_cli
from tests.support.inference import decode_outputs, infer_request
from tests.support.metrics import read_metrics
from tests.support.repository import stage_version
from tests.support.security import ADMIN_TOKEN, INFER_TOKEN
from tests.support.servers import RunningServer, make_settings, running_server

Code = grpc.StatusCode
REQUESTS, ROWS = 40, 8
FEATURES = ("age", "years_experience", "monthly_income", "debt_ratio", "credit_score",
            "loan_amount", "loan_term_months", "dependents")  # fmt: skip


def loan_rows(seed: int, rows: int = ROWS) -> np.ndarray:
    """Applicants spread over the loan features' ranges (model.json features order)."""
    rng = np.random.default_rng(seed)
    low = np.array([18, 0, 1000, 0.0, 350, 1000, 12, 0], np.float32)
    high = np.array([75, 40, 20000, 0.9, 850, 150000, 120, 6], np.float32)
    return (low + rng.random((rows, 8), np.float32) * (high - low)).astype(np.float32)


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, features: np.ndarray, version: str = ""
) -> tuple[str, np.ndarray]:
    request = infer_request("mlp", {"features": features})
    request.model_version = version
    response = stub.ModelInfer(request, timeout=10)
    return response.model_version, decode_outputs(response)["probabilities"]


def describe(server: RunningServer, version: str = "") -> npb.DescribeModelResponse:
    stub = npb_grpc.PredictorStub(server.channel())
    request = npb.DescribeModelRequest(model_name="mlp", model_version=version)
    response: npb.DescribeModelResponse = stub.DescribeModel(request, timeout=10)
    return response


def routing(server: RunningServer) -> npb_grpc.RoutingStub:
    return npb_grpc.RoutingStub(server.channel())


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


# ------------------------------------------------------------------ the comparison alone


def test_comparison_counts_agreement_and_differences_over_its_window() -> None:
    comparison = ShadowComparison(Metrics(), "m", 1, 2)
    served = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    shadowed = np.array([[0.8, 0.2], [0.7, 0.3], [0.2, 0.8]])  # row 1 flips class
    comparison.add(served, shadowed)
    rows, agreement, max_diff, p99 = comparison.window()
    assert (rows, comparison.compared_rows) == (3, 3)
    assert agreement == pytest.approx(2 / 3)
    assert max_diff == pytest.approx(0.3)
    assert p99 == pytest.approx(np.quantile([0.1, 0.3, 0.0], 0.99))
    # The window keeps the last WINDOW_ROWS rows: identical rows push the others out.
    same = np.tile([[0.5, 0.5]], (WINDOW_ROWS, 1))
    comparison.add(same, same)
    assert comparison.window() == (WINDOW_ROWS, 1.0, 0.0, 0.0)
    assert comparison.compared_rows == WINDOW_ROWS + 3


# ------------------------------------------------------------------ real servers


@pytest.fixture
def shadow_repository(scratch_repository: Path) -> Path:
    stage_version(scratch_repository, "mlp", 2)  # the same model again
    stage_version(scratch_repository, "mlp", 3, source="perceptron")  # other weights
    return scratch_repository


def test_identical_copy_as_shadow_finds_full_agreement(shadow_repository: Path) -> None:
    (shadow_repository / "mlp" / "3").rename(shadow_repository / "mlp" / ".gone-3")
    settings = make_settings(shadow_repository, models=["mlp"], shadows={"mlp": 2})
    with running_server(settings) as server:
        all_rows = (REQUESTS + 1) * ROWS
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        for i in range(REQUESTS):
            version, _ = infer(stub, loan_rows(i))
            assert version == "1"  # the highest version other than the shadow serves
        # A KServe v2 REST request is mirrored the same way (one more batch of rows).
        rest = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=10)
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [ROWS, 8],
                            "data": loan_rows(REQUESTS).ravel().tolist()}]}  # fmt: skip
        rest.request("POST", "/v2/models/mlp/infer", json.dumps(body),
                     {"content-type": "application/json"})  # fmt: skip
        answer = rest.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["model_version"] == "1"
        rest.close()
        wait_until(lambda: describe(server).shadow.compared_rows == all_rows)
        shadow = describe(server).shadow
        assert (shadow.serving_version, shadow.shadow_version) == ("1", "2")
        assert shadow.agreement == 1.0
        assert shadow.max_abs_difference == 0.0
        assert shadow.window_rows == all_rows
        assert shadow.dropped_requests == 0
        labels = {"model": "mlp", "version": "1", "shadow_version": "2"}
        metrics = read_metrics(server)
        assert metrics.value("nnserve_shadow_rows_total", **labels) == all_rows
        assert metrics.value("nnserve_shadow_agreeing_rows_total", **labels) == all_rows
        assert metrics.value("nnserve_shadow_requests_total", outcome="compared", **labels) == (
            REQUESTS + 1
        )
        assert metrics.value("nnserve_shadow_min_agreement", **labels) == 0.95
        # Every compared row's difference is in the lowest bucket.
        assert (
            metrics.value("nnserve_shadow_score_difference_bucket", le="1e-06", **labels)
            == all_rows
        )


def test_differing_shadow_measures_what_the_client_sees_then_promotes_without_failures(
    shadow_repository: Path,
) -> None:
    settings = make_settings(shadow_repository, models=["mlp"], version_policy="all")
    with running_server(settings) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        assert not describe(server).HasField("shadow")
        route = routing(server).SetShadow(
            npb.SetShadowRequest(model_name="mlp", shadow_version="3")
        )
        assert (route.serving_version, route.shadow_version, route.pinned) == ("2", "3", False)
        served, shadowed = [], []
        for i in range(REQUESTS):
            features = loan_rows(100 + i)
            version, scores = infer(stub, features)
            assert version == "2"
            served.append(scores)
            shadowed.append(infer(stub, features, version="3")[1])  # not mirrored: named
        wait_until(lambda: describe(server).shadow.compared_rows == REQUESTS * ROWS)
        a, b = np.concatenate(served), np.concatenate(shadowed)
        shadow = describe(server, "3").shadow  # either version of the pair describes it
        want_agreement = float(np.mean(a.argmax(1) == b.argmax(1)))
        assert shadow.agreement == pytest.approx(want_agreement)
        assert shadow.max_abs_difference == pytest.approx(float(np.abs(a - b).max()), abs=1e-6)
        assert shadow.max_abs_difference > 1e-3  # the perceptron is not the mlp
        labels = {"model": "mlp", "version": "2", "shadow_version": "3"}
        metrics = read_metrics(server)
        agreeing = metrics.value("nnserve_shadow_agreeing_rows_total", **labels)
        assert agreeing == round(want_agreement * REQUESTS * ROWS)

        # Promote while clients keep sending: every request succeeds, and from the
        # promote on requests naming no version get version 3.
        failures: list[str] = []
        versions: set[str] = set()
        stop = threading.Event()

        def client(seed: int) -> None:
            own = pb_grpc.GRPCInferenceServiceStub(server.channel())
            while not stop.is_set():
                try:
                    versions.add(infer(own, loan_rows(seed))[0])
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        route = routing(server).PromoteShadow(npb.PromoteShadowRequest(model_name="mlp"))
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        assert failures == []
        assert versions == {"2", "3"}
        assert (route.serving_version, route.shadow_version, route.pinned) == ("3", "", True)
        assert infer(stub, loan_rows(7))[0] == "3"
        assert not describe(server).HasField("shadow")
        assert describe(server).model_version == "3"  # the serving version describes


def test_routing_refusals_are_clear(shadow_repository: Path) -> None:
    def edit_labels(doc: dict[str, object]) -> None:
        doc["labels"] = ["no", "yes"]

    stage_version(shadow_repository, "mlp", 4, edit_labels)
    settings = make_settings(shadow_repository, models=["mlp", "cnn"])
    with running_server(settings) as server:
        rpc = routing(server)

        def shadow(model: str, version: str) -> Callable[[], object]:
            return lambda: rpc.SetShadow(
                npb.SetShadowRequest(model_name=model, shadow_version=version), timeout=10
            )

        code, details = code_of(shadow("nosuch", "1"))
        assert code is Code.NOT_FOUND and "nosuch" in details
        code, details = code_of(shadow("mlp", "9"))
        assert code is Code.NOT_FOUND and "no version" in details
        code, details = code_of(shadow("mlp", "x" * 5000))
        assert code is Code.INVALID_ARGUMENT and len(details) < 300
        code, details = code_of(shadow("cnn", "1"))  # its only version
        assert code is Code.FAILED_PRECONDITION and "no other ready version" in details
        code, details = code_of(shadow("mlp", "4"))  # serving 3 has other labels
        assert code is Code.FAILED_PRECONDITION and "labels differ" in details
        code, details = code_of(
            lambda: rpc.PromoteShadow(npb.PromoteShadowRequest(model_name="mlp"), timeout=10)
        )
        assert code is Code.FAILED_PRECONDITION and "no shadow" in details


def test_a_full_shadow_queue_drops_copies_and_clients_never_notice(
    shadow_repository: Path,
) -> None:
    settings = make_settings(
        shadow_repository, models=["mlp"], shadows={"mlp": 2}, shadow_queue_bytes=0
    )
    with running_server(settings) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        for i in range(10):
            assert infer(stub, loan_rows(i))[0] == "3"
        labels = {"model": "mlp", "version": "3", "shadow_version": "2"}
        metrics = read_metrics(server)
        assert metrics.value("nnserve_shadow_requests_total", outcome="dropped", **labels) == 10
        assert metrics.total("nnserve_shadow_rows_total", **labels) == 0
        assert describe(server).shadow.dropped_requests == 10


def test_routing_needs_the_admin_role_from_the_cli_and_the_client(
    shadow_repository: Path, tokens_file: Path
) -> None:
    settings = make_settings(shadow_repository, models=["mlp"], tokens_file=tokens_file)
    with running_server(settings) as server:
        infer_only = client_cli("shadow", "mlp", "2", "--address", server.address,
                                env={"NNSERVE_TOKEN": INFER_TOKEN})  # fmt: skip
        assert infer_only.returncode == 1 and "PERMISSION_DENIED" in infer_only.stderr
        admin = client_cli("shadow", "mlp", "2", "--address", server.address,
                           env={"NNSERVE_TOKEN": ADMIN_TOKEN})  # fmt: skip
        assert admin.returncode == 0, admin.stderr
        assert admin.stdout.strip() == "model mlp: version 3 serves, shadow: 2"
        with NNServeClient(server.address, token=ADMIN_TOKEN) as client:
            client.classify_tabular("mlp", [dict.fromkeys(FEATURES, 1.0)])
            wait_until(lambda: client.describe("mlp").shadow is not None
                       and client.describe("mlp").shadow.compared_rows == 1)  # type: ignore[union-attr]  # fmt: skip
            route = client.promote_shadow("mlp")
            assert (route.serving_version, route.shadow_version, route.pinned) == ("2", "", True)
            described = client_cli("describe", "mlp", "--address", server.address,
                                   env={"NNSERVE_TOKEN": ADMIN_TOKEN})  # fmt: skip
            assert "version:    2" in described.stdout
