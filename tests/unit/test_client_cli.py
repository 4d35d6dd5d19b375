"""nnserve_client: the library's encoding and the CLI's rendering, over the wire.

The server here implements nnserve.v1.Predictor and grpc.health.v1 on 127.0.0.1
(port 0) with answers computed from the request by known formulas (pixel layout,
feature order, per-event scores), so a transposed image or a reordered feature shows
as a wrong number, and states the real services cannot be put in on demand
(NOT_SERVING, a CUDA provider) are covered. tests/service/test_client_real.py runs the library,
the asyncio client and the CLI against the real services.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nnserve_client import (
    ModelDescription,
    NNServeClient,
    NNServeError,
    ServingStatus,
)
from nnserve_client.inputs import InputError, parse_events, parse_features, read_image
from protos import nnserve_pb2, nnserve_pb2_grpc
from tests.support.cli import client_cli

# ---------------------------------------------------------------- the fake models

FEATURES = ("age", "income", "debt_ratio")
WEIGHTS, BIAS = (0.05, 0.0005, -4.0), -3.0
LOAN_LABELS = ("rejected", "approved")
DIGIT_LABELS = tuple(str(d) for d in range(10))
PIXEL_MAX = 16.0
VOCAB = (
    "<pad>",
    "<unk>",
    "http.request.received",
    "auth.token.validated",
    "db.query.executed",
    "http.response.sent",
    "payment.failed",
)
LOG_LABELS = ("normal", "anomalous")


def loan_scores(values: list[float]) -> list[float]:
    """P(rejected), P(approved) of a logistic unit over the features in model order."""
    z = BIAS + sum(w * x for w, x in zip(WEIGHTS, values, strict=True))
    p = 1.0 / (1.0 + math.exp(-z))
    return [1.0 - p, p]


def digit_scores(pixels: np.ndarray) -> list[float]:
    """Softmax of the first ten pixels in row-major order: sensitive to the layout."""
    first = np.asarray(pixels, dtype=np.float64).ravel(order="C")[:10]
    e = np.exp(first - first.max())
    return (e / e.sum()).tolist()


def position_scores(tokens: list[str]) -> list[float]:
    return [0.9 if t == "payment.failed" else 0.05 + 0.01 * i for i, t in enumerate(tokens)]


def _top_k(labels: tuple[str, ...], scores: list[float], k: int) -> list[nnserve_pb2.ClassScore]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: max(k, 1)]
    return [nnserve_pb2.ClassScore(label=labels[i], index=i, score=scores[i]) for i in order]


def _classification(
    labels: tuple[str, ...], scores: list[float], k: int
) -> nnserve_pb2.Classification:
    best = max(range(len(scores)), key=lambda i: scores[i])
    return nnserve_pb2.Classification(
        label=labels[best], index=best, scores=scores, top_k=_top_k(labels, scores, k)
    )


class FakePredictor(nnserve_pb2_grpc.PredictorServicer):
    def Classify(self, request, context):  # type: ignore[no-untyped-def]
        if request.model_name == "mlp":
            results = []
            for row in request.rows:
                if row.named:
                    missing = [f for f in FEATURES if f not in row.named]
                    if missing:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"missing {missing}")
                    values = [row.named[f] for f in FEATURES]
                else:
                    values = list(row.values)
                if len(values) != len(FEATURES):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "wrong number of features")
                results.append(_classification(LOAN_LABELS, loan_scores(values), request.top_k))
            labels = LOAN_LABELS
        elif request.model_name == "cnn":
            results = []
            for image in request.images:
                if image.WhichOneof("pixels") == "uint8_pixels":
                    raw = np.frombuffer(image.uint8_pixels, dtype=np.uint8)
                    pixels = raw.astype(np.float64) * PIXEL_MAX / 255.0
                else:
                    pixels = np.array(image.float_pixels.values, dtype=np.float64)
                if list(image.shape) not in ([8, 8], [1, 8, 8]) or pixels.size != 64:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"want an 8x8 image, got shape {list(image.shape)}, {pixels.size} pixels",
                    )
                results.append(_classification(DIGIT_LABELS, digit_scores(pixels), request.top_k))
            labels = DIGIT_LABELS
        else:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        return nnserve_pb2.ClassifyResponse(
            model_name=request.model_name, model_version="1", labels=labels, results=results
        )

    def Sequence(self, request, context):  # type: ignore[no-untyped-def]
        if request.model_name != "lstm":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        results = []
        for seq in request.sequences:
            kind = seq.WhichOneof("steps")
            if kind == "tokens":
                tokens = list(seq.tokens.tokens)
                unknown = [t for t in tokens if t not in VOCAB]
                if unknown:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown events {unknown}")
            elif kind == "token_ids":
                tokens = [VOCAB[i] for i in seq.token_ids.ids]
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "numeric steps not supported")
            positions = position_scores(tokens)
            p = max(positions)
            scores = [1.0 - p, p]
            best = int(p > 0.5)
            results.append(
                nnserve_pb2.SequenceResult(
                    label=LOG_LABELS[best],
                    index=best,
                    scores=scores,
                    length=len(tokens),
                    position_scores=positions if request.per_position else [],
                )
            )
        return nnserve_pb2.SequenceResponse(
            model_name="lstm", model_version="1", labels=LOG_LABELS, results=results
        )

    def DescribeModel(self, request, context):  # type: ignore[no-untyped-def]
        if request.model_name == "mlp":
            return nnserve_pb2.DescribeModelResponse(
                model_name="mlp",
                model_version="1",
                family="mlp",
                task="classify",
                labels=LOAN_LABELS,
                feature_names=FEATURES,
                provider="CPUExecutionProvider",
                ready=True,
                model_json=json.dumps({"name": "mlp", "metrics": {"accuracy": 0.97}}),
            )
        if request.model_name == "lstm":
            return nnserve_pb2.DescribeModelResponse(
                model_name="lstm",
                model_version="1",
                family="lstm",
                task="sequence",
                labels=LOG_LABELS,
                vocabulary=VOCAB,
                max_length=64,
                provider="CUDAExecutionProvider",
                ready=True,
            )
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    nnserve_pb2_grpc.add_PredictorServicer_to_server(FakePredictor(), server)
    health_servicer = health.HealthServicer()
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "mlp", "lstm"):
        health_servicer.set(service, serving)
    health_servicer.set("cnn", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


# Nothing listens on port 1 (tcpmux) on a test machine: connection refused at once.
UNREACHABLE = "127.0.0.1:1"


@pytest.fixture()
def client(address: str) -> Iterator[NNServeClient]:
    with NNServeClient(address, timeout=5.0) as c:
        yield c


def corner_digit() -> np.ndarray:
    """An 8x8 image whose brightest of the first ten row-major pixels is pixel 7."""
    image = np.zeros((8, 8), dtype=np.float32)
    image[0, 7] = 16.0  # row-major index 7; transposed it would be index 56
    image[0, 2] = 4.0
    return image


# ---------------------------------------------------------------- library


def test_classify_tabular_named_rows(client: NNServeClient) -> None:
    rows = [
        {"age": 35, "income": 4200, "debt_ratio": 0.3},
        {"debt_ratio": 0.1, "age": 60, "income": 9000},
    ]
    result = client.classify_tabular("mlp", rows, top_k=2)
    assert (result.model, result.version, result.labels) == ("mlp", "1", LOAN_LABELS)
    assert len(result.results) == 2
    for row, got in zip(rows, result.results, strict=True):
        want = loan_scores([row[f] for f in FEATURES])
        assert got.scores == pytest.approx(want, rel=1e-6)
        assert got.label == LOAN_LABELS[int(np.argmax(want))]
        assert [s.label for s in got.top_k] == [LOAN_LABELS[i] for i in np.argsort(want)[::-1]]
        assert got.top_k[0].score >= got.top_k[1].score


def test_classify_tabular_array_is_positional(client: NNServeClient) -> None:
    rows = np.array([[35, 4200, 0.3], [60, 9000, 0.1]])
    named = client.classify_tabular("mlp", [dict(zip(FEATURES, r, strict=True)) for r in rows])
    positional = client.classify_tabular("mlp", rows)
    np.testing.assert_allclose(
        [r.scores for r in positional.results], [r.scores for r in named.results], rtol=1e-6
    )
    one_row = client.classify_tabular("mlp", rows[0])  # 1-D: one row
    assert len(one_row.results) == 1


def test_classify_images_float_uint8_and_batch(client: NNServeClient) -> None:
    image = corner_digit()
    result = client.classify_images("cnn", image, top_k=3)
    assert result.labels == DIGIT_LABELS
    [only] = result.results
    assert only.label == "7"
    assert only.scores == pytest.approx(digit_scores(image), rel=1e-5)
    assert [s.label for s in only.top_k] == ["7", "2", "0"]

    as_uint8 = np.rint(image * 255 / PIXEL_MAX).astype(np.uint8)
    assert client.classify_images("cnn", as_uint8).results[0].label == "7"

    batch = np.stack([image, np.roll(image, -4, axis=1)])  # (2, 8, 8): second has index 3
    assert [r.label for r in client.classify_images("cnn", batch).results] == ["7", "3"]
    with_channel = batch[:, np.newaxis]  # (2, 1, 8, 8)
    assert [r.label for r in client.classify_images("cnn", with_channel).results] == ["7", "3"]


def test_score_sequences_tokens_and_ids(client: NNServeClient) -> None:
    normal = ["http.request.received", "auth.token.validated", "http.response.sent"]
    bad = ["http.request.received", "payment.failed", "http.response.sent", "db.query.executed"]
    result = client.score_sequences("lstm", [normal, bad])
    assert result.labels == LOG_LABELS
    first, second = result.results
    assert (first.label, first.length, first.steps) == ("normal", 3, tuple(normal))
    assert first.position_scores == pytest.approx(position_scores(normal))
    assert second.label == "anomalous"
    assert second.position_scores == pytest.approx(position_scores(bad))

    ids = [VOCAB.index(t) for t in bad]
    by_id = client.score_sequences("lstm", [ids, np.array(ids)]).results
    assert [r.label for r in by_id] == ["anomalous", "anomalous"]
    assert by_id[0].steps == tuple(ids)

    without = client.score_sequences("lstm", [bad], per_position=False).results[0]
    assert without.position_scores == ()
    with pytest.raises(TypeError):
        client.score_sequences("lstm", [["http.request.received", 3]])  # type: ignore[list-item]


def test_describe(client: NNServeClient) -> None:
    d = client.describe("mlp")
    assert isinstance(d, ModelDescription)
    assert (d.name, d.task, d.feature_names, d.ready) == ("mlp", "classify", FEATURES, True)
    assert d.model_json["metrics"]["accuracy"] == 0.97
    assert client.describe("lstm").vocabulary == VOCAB


def test_health(client: NNServeClient) -> None:
    assert client.health() is ServingStatus.SERVING
    assert client.health("mlp") is ServingStatus.SERVING
    assert client.health("cnn") is ServingStatus.NOT_SERVING
    assert client.health("nope") is ServingStatus.SERVICE_UNKNOWN


def test_errors_carry_grpc_status(client: NNServeClient) -> None:
    with pytest.raises(NNServeError) as err:
        client.classify_tabular("nope", [{"age": 1.0}])
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details
    with pytest.raises(NNServeError) as err:
        client.classify_tabular("mlp", [{"age": 35.0}])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NNServeError) as err:
        client.score_sequences("lstm", [["not.an.event"]])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with NNServeClient(UNREACHABLE, timeout=5.0) as dead, pytest.raises(NNServeError) as err:
        dead.health()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- input parsing


def test_parse_features_and_events() -> None:
    assert parse_features(["age=35", " income = 4200.5"]) == {"age": 35.0, "income": 4200.5}
    for bad in (["age"], ["=3"], ["age=old"]):
        with pytest.raises(InputError):
            parse_features(bad)
    assert parse_events("a.b, c.d,,\n# comment\ne.f\n") == ["a.b", "c.d", "e.f"]
    assert parse_events("2,3\n4") == [2, 3, 4]
    with pytest.raises(InputError):
        parse_events(" \n# only a comment\n")


def _png(pixels: np.ndarray, colour: int) -> bytes:
    """A PNG written independently of the decoder, cycling through all five filters."""
    height, width = pixels.shape[:2]
    bpp = {0: 1, 2: 3}[colour]
    rows = pixels.reshape(height, width * bpp).astype(np.int64)
    out = bytearray()
    for y in range(height):
        kind = y % 5
        cur, prev = rows[y], rows[y - 1] if y else np.zeros_like(rows[y])
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        pred = [np.zeros_like(cur), left, prev, (left + prev) // 2, paeth][kind]
        out += bytes([kind]) + ((cur - pred) & 0xFF).astype(np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


def test_read_image_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)

    np.save(tmp_path / "a.npy", grey)
    assert np.array_equal(read_image(tmp_path / "a.npy"), grey)

    (tmp_path / "a.csv").write_text("\n".join(",".join(map(str, r)) for r in grey))
    csv = read_image(tmp_path / "a.csv")
    assert csv.dtype == np.float32 and np.array_equal(csv, grey)

    (tmp_path / "a.pgm").write_bytes(b"P5\n# made by a test\n8 8\n255\n" + grey.tobytes())
    assert np.array_equal(read_image(tmp_path / "a.pgm"), grey)
    ascii_pgm = "P2\n8 8\n15\n" + "\n".join(" ".join(str(v // 17) for v in r) for r in grey)
    (tmp_path / "b.pgm").write_text(ascii_pgm)
    assert np.array_equal(read_image(tmp_path / "b.pgm"), (grey // 17) * 17)

    (tmp_path / "a.png").write_bytes(_png(grey, colour=0))
    assert np.array_equal(read_image(tmp_path / "a.png"), grey)
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)  # (H, W, 3), grey in colour
    (tmp_path / "rgb.png").write_bytes(_png(rgb, colour=2))
    assert np.array_equal(read_image(tmp_path / "rgb.png"), grey)

    for name, content in (("bad.csv", b"1,2,3"), ("bad.png", b"nope"), ("bad.pgm", b"P7 1")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError):
            read_image(tmp_path / name)


def test_png_decoder_matches_pillow(tmp_path: Path) -> None:
    from PIL import Image as image_module

    rng = np.random.default_rng(1)
    for i, mode in enumerate(("L", "RGB", "RGBA", "LA")):
        shape = (13, 11) if mode == "L" else (13, 11, len(mode))
        # Smooth gradients plus noise make the encoder pick a mix of filters.
        base = np.add.outer(np.arange(13) * 9, np.arange(11) * 5)
        if len(shape) == 3:
            base = np.repeat(base[:, :, np.newaxis], shape[2], axis=2)
        pixels = ((base + rng.integers(0, 40, size=shape)) % 256).astype(np.uint8)
        path = tmp_path / f"{i}.png"
        image_module.fromarray(pixels, mode=mode).save(path, optimize=True)
        want = np.asarray(image_module.open(path).convert("L"))
        got = read_image(path)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, mode


# ---------------------------------------------------------------- CLI


def _is_table_row(line: str) -> bool:
    """An indented row of a rank / position table: starts with its number."""
    return line.startswith("  ") and line.split()[0].isdigit()


def test_cli_health_exit_codes(address: str) -> None:
    ok = client_cli("--address", address, "health")
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    model = client_cli("health", "--model", "mlp", "--address", address)  # options after command
    assert (model.returncode, model.stdout.strip()) == (0, "SERVING")
    down = client_cli("--address", address, "health", "--model", "cnn")
    assert (down.returncode, down.stdout.strip()) == (1, "NOT_SERVING")
    unknown = client_cli("--address", address, "--json", "health", "--model", "nope")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout) == {"service": "nope", "status": "SERVICE_UNKNOWN"}
    dead = client_cli("--address", UNREACHABLE, "--timeout", "3", "health")
    assert dead.returncode == 1
    assert "UNAVAILABLE" in dead.stderr


def test_cli_describe(address: str) -> None:
    proc = client_cli("--address", address, "describe", "mlp")
    assert proc.returncode == 0, proc.stderr
    assert "features:   age, income, debt_ratio" in proc.stdout
    assert "labels:     rejected, approved" in proc.stdout
    assert "accuracy:   0.97" in proc.stdout
    as_json = json.loads(client_cli("--address", address, "describe", "lstm", "--json").stdout)
    assert as_json["vocabulary"] == list(VOCAB)
    assert as_json["provider"] == "CUDAExecutionProvider"


def test_cli_loan_features(address: str) -> None:
    args = ["--feature", "age=35", "--feature", "income=4200", "--feature", "debt_ratio=0.3"]
    proc = client_cli("--address", address, "loan", "mlp", *args)
    assert proc.returncode == 0, proc.stderr
    scores = loan_scores([35, 4200, 0.3])
    best = int(np.argmax(scores))
    assert f"prediction: {LOAN_LABELS[best]} ({scores[best]:.4f})" in proc.stdout
    assert f"rejected={scores[0]:.4f} approved={scores[1]:.4f}" in proc.stdout
    lines = proc.stdout.splitlines()
    rank_rows = [line.split() for line in lines if _is_table_row(line)]
    assert [r[1] for r in rank_rows] == [LOAN_LABELS[best], LOAN_LABELS[1 - best]]

    as_json = json.loads(client_cli("--address", address, "--json", "loan", "mlp", *args).stdout)
    assert as_json["results"][0]["scores"] == pytest.approx(scores, rel=1e-6)
    assert as_json["results"][0]["top_k"][0]["label"] == LOAN_LABELS[best]


def test_cli_loan_file_and_errors(address: str, tmp_path: Path) -> None:
    rows = [
        {"age": 35, "income": 4200, "debt_ratio": 0.3},
        {"age": 70, "income": 9e3, "debt_ratio": 0},
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    proc = client_cli(
        "--address", address, "--json", "loan", "mlp", "--file", str(tmp_path / "rows.json")
    )
    assert proc.returncode == 0, proc.stderr
    got = [r["scores"] for r in json.loads(proc.stdout)["results"]]
    np.testing.assert_allclose(
        got, [loan_scores([r[f] for f in FEATURES]) for r in rows], rtol=1e-6
    )

    bad_value = client_cli("--address", address, "loan", "mlp", "--feature", "age=old")
    assert bad_value.returncode == 2 and "not a number" in bad_value.stderr
    missing = client_cli("--address", address, "loan", "mlp", "--feature", "age=35")
    assert missing.returncode == 1 and "INVALID_ARGUMENT" in missing.stderr
    unknown = client_cli("--address", address, "loan", "nope", "--feature", "age=35")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    no_input = client_cli("--address", address, "loan", "mlp")
    assert no_input.returncode == 2


@pytest.mark.parametrize("fmt", ["npy", "npy-uint8", "csv", "pgm", "png"])
def test_cli_digit_image_files(address: str, tmp_path: Path, fmt: str) -> None:
    image = corner_digit()
    as_uint8 = np.rint(image * 255 / PIXEL_MAX).astype(np.uint8)
    path = tmp_path / f"digit.{fmt.split('-')[0]}"
    if fmt == "npy":
        np.save(path, image)
    elif fmt == "npy-uint8":
        np.save(path, as_uint8)
    elif fmt == "csv":
        path.write_text(",".join(f"{v:g}" for v in image.ravel()))
    elif fmt == "pgm":
        path.write_bytes(b"P5 8 8 255\n" + as_uint8.tobytes())
    else:
        path.write_bytes(_png(as_uint8, colour=0))
    proc = client_cli("--address", address, "digit", "cnn", "--image", str(path), "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    assert "prediction: 7 (" in proc.stdout
    rank_rows = [line.split() for line in proc.stdout.splitlines() if _is_table_row(line)]
    assert [r[1] for r in rank_rows] == ["7", "2"]


def test_cli_digit_sample(address: str) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    proc = client_cli("--address", address, "--json", "digit", "cnn", "--sample", "5")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["true_label"] == int(digits.target[5])
    assert got["results"][0]["scores"] == pytest.approx(digit_scores(digits.images[5]), rel=1e-5)
    bad = client_cli("--address", address, "digit", "cnn", "--sample", "99999")
    assert bad.returncode == 2


def test_cli_logs_table(address: str, tmp_path: Path) -> None:
    events = ["http.request.received", "auth.token.validated", "payment.failed"]
    proc = client_cli("--address", address, "logs", "lstm", "--events", ",".join(events))
    assert proc.returncode == 0, proc.stderr
    assert "sequence: anomalous (0.9000)" in proc.stdout
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if _is_table_row(line)}
    assert set(rows) == set(events)
    assert rows["payment.failed"].rstrip().endswith("<- anomalous")
    assert "anomalous" not in rows["auth.token.validated"]
    assert f"{position_scores(events)[1]:.4f}" in rows["auth.token.validated"]
    assert "3 events, 1 flagged (score > 0.5)" in proc.stdout

    (tmp_path / "events.txt").write_text("# one per line\n" + "\n".join(events[:2]) + "\n")
    as_json = json.loads(
        client_cli(
            "--address", address, "--json", "logs", "lstm", "--file", str(tmp_path / "events.txt")
        ).stdout
    )
    [result] = as_json["results"]
    assert (result["label"], result["steps"], result["flagged"]) == ("normal", events[:2], [])
    assert result["position_scores"] == pytest.approx(position_scores(events[:2]))

    unknown = client_cli("--address", address, "logs", "lstm", "--events", "not.an.event")
    assert unknown.returncode == 1 and "INVALID_ARGUMENT" in unknown.stderr
