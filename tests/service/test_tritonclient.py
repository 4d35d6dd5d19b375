"""tritonclient.grpc, unmodified, against nnserve: metadata, config, infer.

tritonclient registers its own copy of the `inference` protos in the default descriptor
pool, which clashes with ours (docs/protocol.md), so the client runs in a subprocess
that imports only tritonclient.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.support.models import golden_inputs, reference_outputs
from tests.support.servers import RunningServer

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc

    address, model, inputs_file, out_file = sys.argv[1:5]
    client = tc.InferenceServerClient(url=address)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata(model, as_json=True),
        "config": client.get_model_config(model, as_json=True),
        "index": client.get_model_repository_index(as_json=True),
        "stats": client.get_inference_statistics(model, as_json=True),
    }
    arrays = np.load(inputs_file)
    dtypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    infer_inputs = []
    for name in arrays.files:
        value = arrays[name]
        tensor = tc.InferInput(name, list(value.shape), dtypes[value.dtype])
        tensor.set_data_from_numpy(value)
        infer_inputs.append(tensor)
    result = client.infer(model, infer_inputs, request_id="triton-1")
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in report["metadata"]["outputs"]}
    np.savez(out_file, **outputs)
    report["response_id"] = result.get_response(as_json=True).get("id")
    try:
        client.infer("no_such_model", infer_inputs)
    except tc.InferenceServerException as exc:
        report["unknown_model_error"] = {"status": exc.status(), "message": exc.message()}
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_tritonclient_metadata_config_and_infer(
    name: str, servers: dict[str, RunningServer], model_repository: Path, tmp_path: Path
) -> None:
    inputs = golden_inputs(model_repository, name)
    inputs_file, out_file = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_file, **inputs)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            servers[name].address,
            name,
            str(inputs_file),
            str(out_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["server"]["name"] == "nnserve"
    assert report["metadata"]["name"] == name
    assert [i["name"] for i in report["metadata"]["inputs"]] == list(inputs)
    config = report["config"]["config"]
    assert config["name"] == name and config["platform"] == "onnxruntime_onnx"
    assert int(config["max_batch_size"]) > 1
    assert report["response_id"] == "triton-1"
    assert {m["name"] for m in report["index"]["models"]} >= {name}
    assert report["stats"]["model_stats"][0]["name"] == name
    assert report["unknown_model_error"]["status"] == "StatusCode.NOT_FOUND"

    got = dict(np.load(out_file))
    expected = reference_outputs(model_repository, name, inputs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


STREAM_CLIENT = textwrap.dedent(
    """
    import json, queue, sys
    import numpy as np
    import tritonclient.grpc as tc

    address, model, inputs_file, out_file = sys.argv[1:5]
    arrays = np.load(inputs_file)
    dtypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    answers = queue.Queue()
    client = tc.InferenceServerClient(url=address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    rows = len(next(iter(arrays.values())))
    for i in range(rows):  # one request per golden row, each with its id
        tensors = []
        for name in arrays.files:
            value = arrays[name][i : i + 1]
            tensor = tc.InferInput(name, list(value.shape), dtypes[value.dtype])
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        client.async_stream_infer(model, tensors, request_id=f"row-{i}")
        if i == 0:  # a failed request in the middle: its error comes back, the stream goes on
            client.async_stream_infer("no_such_model", tensors, request_id="bad")
    outputs, errors = {}, []
    for _ in range(rows + 1):
        result, error = answers.get(timeout=30)
        if error is not None:
            errors.append(str(error))
            continue
        rid = result.get_response().id
        for o in result.get_response().outputs:
            outputs[f"{rid}/{o.name}"] = result.as_numpy(o.name)
    client.stop_stream()
    np.savez(out_file, **outputs)
    print(json.dumps({"errors": errors, "rows": rows}))
    """
)


def test_tritonclient_stream_infer(
    servers: dict[str, RunningServer], model_repository: Path, tmp_path: Path
) -> None:
    """tritonclient's start_stream / async_stream_infer (ModelStreamInfer): every request
    answered with its id and the outputs of running it alone; a failed one answers with
    its error and the stream goes on."""
    inputs = golden_inputs(model_repository, "mlp", case=1)
    inputs_file, out_file = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_file, **inputs)
    address = servers["mlp"].address
    args = [sys.executable, "-c", STREAM_CLIENT, address, "mlp", str(inputs_file), str(out_file)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["errors"]) == 1 and "NOT_FOUND" in report["errors"][0]
    got = dict(np.load(out_file))
    for i in range(report["rows"]):
        row = {name: value[i : i + 1] for name, value in inputs.items()}
        for key, value in reference_outputs(model_repository, "mlp", row).items():
            np.testing.assert_allclose(got[f"row-{i}/{key}"], value, rtol=1e-3, atol=1e-4)
