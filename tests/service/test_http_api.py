"""The KServe v2 REST port (services/http/) against real servers on 127.0.0.1:
tritonclient.http unmodified, JSON and binary tensors, the HTTP status of each failure,
the body bound, tokens, TLS, the drain, metrics and the ports file."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from contract.model import NUMPY_TO_V2, V2_TO_NUMPY, read_spec
from services.ops.auth import token_hash
from services.settings import Settings
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs, model_json, reference_outputs
from tests.support.pki import issue, make_ca, serial_of
from tests.support.security import replace_file
from tests.support.servers import RunningServer, make_settings, running_server

Reply = tuple[int, dict[str, str], bytes]
INFER = "/v2/models/{}/infer"
MLP = INFER.format("mlp")
HEADER_LENGTH = "Inference-Header-Content-Length"


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a new connection: (status, lower-cased headers, body)."""
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        if context is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def json_body(inputs: dict[str, np.ndarray], nested: bool = False, **fields: Any) -> bytes:
    tensors = [
        {
            "name": name,
            "shape": list(value.shape),
            "datatype": NUMPY_TO_V2[value.dtype],
            "data": value.tolist() if nested else value.ravel().tolist(),
        }
        for name, value in inputs.items()
    ]
    return json.dumps({"inputs": tensors, **fields}).encode()


def binary_body(inputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Triton's binary tensor form: JSON, then each input's raw bytes."""
    tensors = [
        {
            "name": name,
            "shape": list(value.shape),
            "datatype": NUMPY_TO_V2[value.dtype],
            "parameters": {"binary_data_size": value.nbytes},
        }
        for name, value in inputs.items()
    ]
    head = json.dumps({"inputs": tensors}).encode()
    raw = b"".join(value.tobytes() for value in inputs.values())
    return head + raw, {HEADER_LENGTH: str(len(head))}


def outputs_of(reply: Reply) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A 200 infer response: its JSON and its outputs (JSON data or binary)."""
    status, headers, body = reply
    assert status == 200, body[:300]
    end = int(headers.get(HEADER_LENGTH.lower(), len(body)))
    doc = json.loads(body[:end])
    arrays, offset = {}, end
    for out in doc["outputs"]:
        dtype = V2_TO_NUMPY[out["datatype"]]
        if "data" in out:
            arrays[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        else:
            size = out["parameters"]["binary_data_size"]
            raw = body[offset : offset + size]
            arrays[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
            offset += size
    assert offset == len(body) or end == len(body)
    return doc, arrays


def error_of(reply: Reply) -> str:
    """The message of an {"error": ...} answer (nothing else in it)."""
    _, headers, body = reply
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert list(doc) == ["error"] and isinstance(doc["error"], str)
    return str(doc["error"])


def assert_golden_close(
    model_repository: Path, name: str, got: np.ndarray, want: np.ndarray
) -> None:
    spec = read_spec(model_repository, name, 1)
    np.testing.assert_allclose(got, want, rtol=spec.rtol, atol=spec.atol)


# ---------------------------------------------------------------- tritonclient.http

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    url, model, inputs_file, out_file = sys.argv[1:5]
    client = th.InferenceServerClient(url=url)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "version_ready": client.is_model_ready(model, "1"),
        "unknown_ready": client.is_model_ready("no_such_model"),
        "server": client.get_server_metadata(),
        "metadata": client.get_model_metadata(model),
        "index": client.get_model_repository_index(),
    }
    arrays = dict(np.load(inputs_file))
    dtypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}

    def tensors(binary, arrays=arrays):
        out = []
        for name, value in arrays.items():
            tensor = th.InferInput(name, list(value.shape), dtypes[value.dtype])
            tensor.set_data_from_numpy(value, binary_data=binary)
            out.append(tensor)
        return out

    def failure(run):
        try:
            run()
        except InferenceServerException as exc:
            return {"status": exc.status(), "message": exc.message()}
        return None

    names = [o["name"] for o in report["metadata"]["outputs"]]
    # The client's defaults: binary tensors both ways (Triton's extension).
    binary = client.infer(model, tensors(True), request_id="rest-1")
    as_json = client.infer(
        model, tensors(False), model_version="1",
        outputs=[th.InferRequestedOutput(n, binary_data=False) for n in names],
    )
    saved = {}
    for n in names:
        saved["binary/" + n] = binary.as_numpy(n)
        saved["json/" + n] = as_json.as_numpy(n)
    np.savez(out_file, **saved)
    report["binary_response"] = binary.get_response()
    report["json_response"] = as_json.get_response()
    report["unknown_model"] = failure(lambda: client.infer("no_such_model", tensors(False)))
    extra_axis = {k: v[None] for k, v in arrays.items()}
    report["bad_shape"] = failure(lambda: client.infer(model, tensors(False, extra_axis)))
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_tritonclient_http_health_metadata_and_infer(
    name: str, servers: dict[str, RunningServer], model_repository: Path, tmp_path: Path
) -> None:
    """tritonclient.http, unmodified, with its binary defaults and with JSON tensors; the
    outputs equal in-process ONNX Runtime within the model's golden tolerance."""
    inputs = golden_inputs(model_repository, name)
    inputs_file, out_file = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_file, allow_pickle=False, **inputs)
    url = f"127.0.0.1:{servers[name].server.http_port}"
    args = [sys.executable, "-c", CLIENT, url, name, str(inputs_file), str(out_file)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["live"] and report["ready"] and report["model_ready"] and report["version_ready"]
    assert report["unknown_ready"] is False
    assert report["server"]["name"] == "nnserve"
    assert "binary_tensor_data" in report["server"]["extensions"]
    metadata = report["metadata"]
    assert metadata["name"] == name and metadata["versions"] == ["1"]
    assert [i["name"] for i in metadata["inputs"]] == list(inputs)
    assert {"name": name, "version": "1", "state": "READY", "reason": ""} in report["index"]
    assert report["binary_response"]["id"] == "rest-1"
    assert all("binary_data_size" in o["parameters"] for o in report["binary_response"]["outputs"])
    assert "id" not in report["json_response"]
    assert report["unknown_model"]["status"] == "404"
    assert "no_such_model" in report["unknown_model"]["message"]
    assert report["bad_shape"]["status"] == "400" and "rank" in report["bad_shape"]["message"]

    got = dict(np.load(out_file))
    expected = reference_outputs(model_repository, name, inputs)
    assert set(got) == {f"{kind}/{key}" for kind in ("binary", "json") for key in expected}
    for key, value in expected.items():
        assert_golden_close(model_repository, name, got[f"binary/{key}"], value)
        assert_golden_close(model_repository, name, got[f"json/{key}"], value)


# ---------------------------------------------------------------- JSON tensors


def test_nested_and_flat_json_data_and_output_selection(
    classify_server: RunningServer, model_repository: Path
) -> None:
    port = classify_server.server.http_port
    inputs = golden_inputs(model_repository, "cnn")  # (B, 1, 8, 8): rank-4 nesting
    expected = reference_outputs(model_repository, "cnn", inputs)
    wanted = sorted(expected)[0]
    nested = call(
        port, "POST", "/v2/models/cnn/versions/1/infer",
        json_body(inputs, nested=True, id="nested-1", outputs=[{"name": wanted}]),
    )  # fmt: skip
    doc, got = outputs_of(nested)
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("cnn", "1", "nested-1")
    assert list(got) == [wanted]  # only the output asked for
    assert_golden_close(model_repository, "cnn", got[wanted], expected[wanted])

    flat_doc, flat = outputs_of(call(port, "POST", INFER.format("cnn"), json_body(inputs)))
    assert "id" not in flat_doc and set(flat) == set(expected)
    for key, value in expected.items():
        assert_golden_close(model_repository, "cnn", flat[key], value)
    # Binary inputs with JSON outputs asked for per output give the same numbers.
    body, headers = binary_body(inputs)
    mixed = json.loads(body[: int(headers[HEADER_LENGTH])])
    mixed["outputs"] = [{"name": wanted, "parameters": {"binary_data": False}}]
    head = json.dumps(mixed).encode()
    reply = call(
        port, "POST", INFER.format("cnn"), head + body[int(headers[HEADER_LENGTH]) :],
        {HEADER_LENGTH: str(len(head))},
    )  # fmt: skip
    assert HEADER_LENGTH.lower() not in reply[1]  # no binary part: plain JSON
    assert_golden_close(model_repository, "cnn", outputs_of(reply)[1][wanted], expected[wanted])


def test_integer_inputs_are_never_truncated_or_wrapped(
    sequence_server: RunningServer, model_repository: Path
) -> None:
    port = sequence_server.server.http_port
    inputs = golden_inputs(model_repository, "lstm")
    _, got = outputs_of(call(port, "POST", INFER.format("lstm"), json_body(inputs)))
    for key, value in reference_outputs(model_repository, "lstm", inputs).items():
        assert_golden_close(model_repository, "lstm", got[key], value)
    doc = json.loads(json_body(inputs))
    tokens = next(t for t in doc["inputs"] if t["datatype"] == "INT64" and len(t["shape"]) == 2)
    for bad in (1.5, 2**70, -(2**63) - 1):
        tokens["data"][0] = bad
        reply = call(port, "POST", INFER.format("lstm"), json.dumps(doc).encode())
        assert reply[0] == 400 and "does not fit INT64" in error_of(reply), bad


# ---------------------------------------------------------------- failures

MLP_ROW = [0.1] * 8


def mlp_body(outputs: list[dict[str, Any]] | None = None, **tensor: Any) -> bytes:
    """One mlp row as JSON; `tensor` replaces fields of the input tensor."""
    item = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": MLP_ROW}
    item.update(tensor)
    doc: dict[str, Any] = {"inputs": [item]}
    if outputs is not None:
        doc["outputs"] = outputs
    return json.dumps(doc).encode()


LONG = "x" * 100_000
# (method, path, body, headers, status, fragment of the error message)
FAILURES: list[tuple[str, str, bytes | None, dict[str, str], int, str]] = [
    ("POST", INFER.format("no_such_model"), mlp_body(), {}, 404, "unknown model"),
    ("GET", "/v2/models/no_such_model", None, {}, 404, "unknown model"),
    ("GET", "/v2/models/mlp/versions/9/ready", None, {}, 404, "no version"),
    ("GET", "/v2/models/-bad/ready", None, {}, 400, "invalid model name"),
    ("POST", MLP, mlp_body(shape=[1, 7], data=MLP_ROW[:7]), {}, 400, "shape"),
    ("POST", MLP, mlp_body(shape=[1, 8, 1]), {}, 400, "rank"),
    ("POST", MLP, mlp_body(data=MLP_ROW[:7]), {}, 400, "needs 8"),
    ("POST", MLP, mlp_body(data=[MLP_ROW[:4], MLP_ROW[:3]]), {}, 400, "needs 1"),
    ("POST", MLP, mlp_body(datatype="FP64"), {}, 400, "datatype"),
    ("POST", MLP, mlp_body(data=[*MLP_ROW[:7], "x"]), {}, 400, "does not fit"),
    ("POST", MLP, mlp_body(data=[*MLP_ROW[:7], 1e300]), {}, 400, "does not fit"),
    ("POST", MLP, mlp_body(name="nope"), {}, 400, "no input"),
    ("POST", MLP, mlp_body(shape=[-1, 8]), {}, 400, "shape entries"),
    ("POST", MLP, b'{"inputs": [', {}, 400, "not valid JSON"),
    ("POST", MLP, b"[" * 200_000 + b"]" * 200_000, {}, 400, "nested too deeply"),
    ("POST", MLP, mlp_body().replace(b"0.1]", b"NaN]"), {}, 400, "NaN"),
    ("POST", MLP, b'{"inputs": []}', {}, 400, "needs inputs"),
    ("POST", MLP, mlp_body(outputs=[{"name": "nope"}]), {}, 400, "no output"),
    ("POST", MLP, mlp_body(parameters={"binary_data_size": 33}), {}, 400,
     "binary_data_size"),
    ("POST", MLP, mlp_body(), {HEADER_LENGTH: "99999999"}, 400, HEADER_LENGTH.lower()),
    ("POST", MLP, mlp_body(), {"Content-Encoding": "gzip"}, 415, "Content-Encoding"),
    ("POST", MLP, mlp_body(name=LONG), {}, 400, "name must be a string"),
    ("POST", MLP, json.dumps({"id": LONG, "inputs": []}).encode(), {}, 400, "id must"),
    ("GET", MLP, None, {}, 405, "Method Not Allowed"),
    ("GET", "/v2/nothing/here", None, {}, 404, "no such route"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    FAILURES,
    ids=[f"{f[4]}-{f[5][:24]}" for f in FAILURES],
)
def test_failures_answer_json_errors_with_the_documented_status(
    classify_server: RunningServer,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    reply = call(classify_server.server.http_port, method, path, body, headers)
    assert reply[0] == status, reply[2][:300]
    message = error_of(reply)
    assert fragment in message
    # Client strings are quoted cut: a message never grows with what was sent.
    assert len(message) < 400 and "x" * 80 not in message


def test_deadline_from_parameters_timeout_is_504(classify_server: RunningServer) -> None:
    port = classify_server.server.http_port
    expired = json.loads(mlp_body())
    expired["parameters"] = {"timeout": 1}  # one microsecond (Triton's unit)
    reply = call(port, "POST", INFER.format("mlp"), json.dumps(expired).encode())
    assert reply[0] == 504 and "deadline" in error_of(reply)
    expired["parameters"] = {"timeout": 10_000_000}  # ten seconds: plenty
    assert call(port, "POST", INFER.format("mlp"), json.dumps(expired).encode())[0] == 200


def test_requests_are_counted_by_route_status_and_model(classify_server: RunningServer) -> None:
    port = classify_server.server.http_port
    before = read_metrics(classify_server)
    assert call(port, "POST", INFER.format("mlp"), mlp_body())[0] == 200
    assert call(port, "POST", INFER.format("mlp"), mlp_body(datatype="FP64"))[0] == 400
    assert call(port, "GET", "/v2/not/a/route")[0] == 404
    assert call(port, "GET", "/v2/models/mlp/ready")[0] == 200
    after = read_metrics(classify_server)

    def delta(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    route = "/v2/models/{name}/infer"
    assert delta("nnserve_http_requests_total", route=route, status="200") == 1
    assert delta("nnserve_http_requests_total", route=route, status="400") == 1
    assert delta("nnserve_http_requests_total", route="unmatched", status="404") == 1
    assert delta("nnserve_http_requests_total", route="/v2/models/{name}/ready", status="200") == 1
    assert delta("nnserve_http_request_duration_seconds_count", route=route) == 2
    # Inference requests reach the data plane: counted as every request is, per model.
    common = {"model": "mlp", "version": "1", "method": "RestInfer"}
    assert delta("nnserve_requests_total", code="OK", **common) == 1
    assert delta("nnserve_requests_total", code="INVALID_ARGUMENT", **common) == 1


# ---------------------------------------------------------------- limits


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_body_over_the_limit_is_413_before_it_is_read(scratch_repository: Path) -> None:
    limit = 64 * 1024
    settings = make_settings(scratch_repository, models=["mlp"], max_message_bytes=limit)
    with running_server(settings) as running:
        port = running.server.http_port
        head = f"POST {INFER.format('mlp')} HTTP/1.1\r\nHost: test\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Headers only: the server answers and closes without the body ever being sent.
            sock.sendall(f"{head}Content-Length: {limit + 1}\r\n\r\n".encode())
            answer = read_until_closed(sock)
        status_line, _, rest = answer.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 413")
        assert b"connection: close" in headers.lower()
        assert f"over the {limit} byte limit" in json.loads(body)["error"]

        # Chunked (no Content-Length): counted as it arrives, refused once over the limit.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b" " * 16384
            for _ in range(limit // len(chunk) + 1):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 413")

        ok = call(port, "POST", INFER.format("mlp"), mlp_body())  # the server goes on
        assert ok[0] == 200
        values = read_metrics(running)
        route = "/v2/models/{name}/infer"
        assert values.total("nnserve_http_requests_total", route=route, status="413") == 2


def test_request_bodies_in_flight_are_bounded_429(scratch_repository: Path) -> None:
    settings = make_settings(scratch_repository, models=["mlp"], max_inflight_bytes=4096)
    with running_server(settings) as running:
        port = running.server.http_port
        padded = mlp_body() + b" " * 8192  # valid JSON, over the bytes in flight
        refused = call(port, "POST", INFER.format("mlp"), padded)
        assert refused[0] == 429 and refused[1]["retry-after"] == "1"
        assert "max_inflight_bytes" in error_of(refused)
        assert call(port, "POST", INFER.format("mlp"), mlp_body())[0] == 200


# ---------------------------------------------------------------- tokens

INFER_TOKEN = "rest-infer-" + "i" * 40
ADMIN_TOKEN = "rest-admin-" + "a" * 40


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_401_403_and_the_grpc_roles(scratch_repository: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    entries = [
        {"name": "reader", "sha256": token_hash(INFER_TOKEN), "roles": ["infer"]},
        {"name": "deployer", "sha256": token_hash(ADMIN_TOKEN), "roles": ["admin"]},
    ]
    tokens.write_text(json.dumps({"tokens": entries}))
    settings = make_settings(
        scratch_repository, models=["mlp"], tokens_file=tokens, model_control="explicit"
    )
    with running_server(settings) as running:
        port = running.server.http_port
        path = INFER.format("mlp")
        missing = call(port, "POST", path, mlp_body())
        assert missing[0] == 401 and missing[1]["www-authenticate"] == "Bearer"
        assert "missing bearer token" in error_of(missing)
        assert call(port, "GET", "/v2/health/ready")[0] == 401  # ServerReady: infer role
        wrong = call(port, "POST", path, mlp_body(), bearer("not-a-token"))
        assert wrong[0] == 401 and "invalid bearer token" in error_of(wrong)
        basic = call(port, "POST", path, mlp_body(), {"Authorization": "Basic eDp5"})
        assert basic[0] == 401 and "malformed" in error_of(basic)

        assert call(port, "POST", path, mlp_body(), bearer(INFER_TOKEN))[0] == 200
        unload = "/v2/repository/models/mlp/unload"
        forbidden = call(port, "POST", unload, b"", bearer(INFER_TOKEN))
        assert forbidden[0] == 403 and "admin" in error_of(forbidden)
        assert running.server.readiness.model_ready("mlp")  # untouched

        admin = bearer(ADMIN_TOKEN)  # admin implies infer
        assert call(port, "POST", unload, b"", admin)[0] == 200
        # Unloaded: no longer served, so unknown, as ModelReady says over gRPC.
        assert call(port, "GET", "/v2/models/mlp/ready", None, admin)[0] == 404
        assert call(port, "POST", path, mlp_body(), admin)[0] == 404
        assert call(port, "POST", "/v2/repository/models/mlp/load", b"{}", admin)[0] == 200
        assert call(port, "GET", "/v2/models/mlp/ready", None, admin)[0] == 200

        values = read_metrics(running)
        failures = {
            reason: values.total("nnserve_auth_failures_total", reason=reason)
            for reason in ("missing", "invalid", "malformed", "forbidden")
        }
        assert failures == {"missing": 2, "invalid": 1, "malformed": 1, "forbidden": 1}


# ---------------------------------------------------------------- drain


def test_drain_finishes_accepted_requests_and_refuses_new_ones_with_503(
    scratch_repository: Path, model_repository: Path
) -> None:
    settings = make_settings(
        scratch_repository, service="sequence", models=["transformer"], inference_threads=1,
        max_batch_size=256,
    )  # fmt: skip
    with running_server(settings) as running:
        port = running.server.http_port
        # A full batch each: every request runs alone for tens of milliseconds.
        max_length = model_json(model_repository, "transformer")["sequence"]["max_length"]
        inputs = {
            "tokens": np.full((256, max_length), 2, np.int64),
            "lengths": np.full(256, max_length, np.int64),
        }
        body, headers = binary_body(inputs)
        path = INFER.format("transformer")
        replies: list[Reply] = []
        threads = [
            threading.Thread(target=lambda: replies.append(call(port, "POST", path, body, headers)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while running.server.registry.resolve("transformer").batcher.queue_depth < 7:
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.001)
        stopping = asyncio.run_coroutine_threadsafe(running.server.stop(grace=20.0), running.loop)
        while not running.server.state.draining:
            time.sleep(0.001)
        ready = call(port, "GET", "/v2/health/ready")
        assert (ready[0], json.loads(ready[2])) == (503, {"ready": False})
        assert call(port, "GET", "/v2/health/live")[0] == 200  # live while draining
        small = {k: v[:1] for k, v in inputs.items()}
        refused = call(port, "POST", path, json_body(small))
        assert refused[0] == 503 and "draining" in error_of(refused)
        stopping.result(60)
        for t in threads:
            t.join(60)
        assert [r[0] for r in replies] == [200] * 8, [r[2][:200] for r in replies]
        expected = reference_outputs(model_repository, "transformer", small)
        _, got = outputs_of(replies[0])
        for key, value in expected.items():
            assert_golden_close(model_repository, "transformer", got[key][:1], value)
    # After the drain the port is closed.
    with pytest.raises(ConnectionRefusedError):
        call(port, "GET", "/v2/health/live")


# ---------------------------------------------------------------- settings, TLS


def test_http_port_defaults_ports_file_and_off(model_repository: Path, tmp_path: Path) -> None:
    assert Settings(service="classify").http_port == 8081
    assert Settings(service="sequence").http_port == 8082
    assert Settings(service="sequence", grpc_port=50052).http_port == 8082
    assert Settings(grpc_port=0).http_port == 0  # free ports all round (tests, launchers)
    assert Settings(grpc_port=7001).http_port == -1  # chosen ports: choose this one too
    assert Settings(grpc_port=7001, http_port=7101).http_port == 7101
    with pytest.raises(ValidationError):
        Settings(http_port=70000)
    ports = tmp_path / "ports.json"
    with running_server(make_settings(model_repository, models=["mlp"], ports_file=ports)) as on:
        doc = json.loads(ports.read_text())
        assert doc["http_port"] == on.server.http_port > 0
        assert doc["grpc_port"] == on.server.grpc_port
        assert call(doc["http_port"], "GET", "/v2/health/live")[0] == 200
    off = make_settings(model_repository, models=["mlp"], ports_file=ports, http_port=-1)
    with running_server(off) as running:
        assert running.server.http is None
        assert json.loads(ports.read_text())["http_port"] is None


def served_serial(port: int) -> int:
    return serial_of(ssl.get_server_certificate(("127.0.0.1", port), timeout=5))


def test_tls_rotation_and_mutual_tls_on_the_rest_port(
    model_repository: Path, tmp_path: Path
) -> None:
    ca, other_ca = make_ca(tmp_path, "ca"), make_ca(tmp_path, "other-ca")
    first = issue(ca, tmp_path, "server", server=True)
    rotated = issue(other_ca, tmp_path, "rotated", server=True)
    client = issue(ca, tmp_path, "client", server=False)
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(first.cert, live_cert)
    shutil.copyfile(first.key, live_key)
    trusts_ca = ssl.create_default_context(cafile=str(ca.cert))
    trusts_other = ssl.create_default_context(cafile=str(other_ca.cert))
    settings = make_settings(model_repository, models=["mlp"], tls_cert=live_cert, tls_key=live_key)
    with running_server(settings) as running:
        port = running.server.http_port
        assert call(port, "GET", "/v2/health/live", context=trusts_ca)[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(port, "GET", "/v2/health/live")  # plaintext to a TLS port
        assert served_serial(port) == first.serial
        replace_file(rotated.cert, live_cert)  # half way: the pair does not match
        assert served_serial(port) == first.serial
        replace_file(rotated.key, live_key)
        assert served_serial(port) == rotated.serial
        assert call(port, "GET", "/v2/health/live", context=trusts_other)[0] == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            call(port, "GET", "/v2/health/live", context=trusts_ca)

    mutual = make_settings(
        model_repository, models=["mlp"], tls_cert=first.cert, tls_key=first.key,
        tls_client_ca=ca.cert,
    )  # fmt: skip
    with running_server(mutual) as running:
        port = running.server.http_port
        with pytest.raises((ssl.SSLError, ConnectionError)):
            call(port, "GET", "/v2/health/live", context=trusts_ca)  # no client certificate
        with_client = ssl.create_default_context(cafile=str(ca.cert))
        with_client.load_cert_chain(client.cert, client.key)
        assert call(port, "GET", "/v2/health/live", context=with_client)[0] == 200
