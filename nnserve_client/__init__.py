"""Python client for nnserve's domain API (``nnserve.v1.Predictor``) and gRPC health.

    from nnserve_client import NNServeClient

    with NNServeClient("127.0.0.1:50051") as client:
        result = client.classify_tabular("mlp", [{"age": 35, "income": 4200, ...}], top_k=2)
        print(result.results[0].label, result.results[0].top_k)

Calls return frozen dataclasses, never protobuf messages. A failed RPC raises
:class:`NNServeError` carrying the gRPC status code. Imports only grpc, the generated
protos and numpy, so it is cheap enough for health checks.

TLS, mutual TLS and tokens (docs/operations.md, "Security"):

    NNServeClient("serving.example:50051", tls=True, ca="ca.pem",   # ca: omit for system roots
                  cert="client.pem", key="client.key",              # mutual TLS only
                  token=os.environ["NNSERVE_TOKEN"])                # sent as a bearer token
"""

from __future__ import annotations

import enum
import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import nnserve_pb2, nnserve_pb2_grpc

__all__ = [
    "AttendedEvent",
    "ClassScore",
    "Classification",
    "ClassifyResult",
    "ExplainOptions",
    "Explanation",
    "ModelDescription",
    "NNServeClient",
    "NNServeError",
    "Route",
    "SequenceResult",
    "SequenceScores",
    "ServingStatus",
    "ShadowComparison",
    "StreamEventScore",
    "StreamSession",
    "open_channel",
]

DEFAULT_TIMEOUT_S = 10.0
CLOSE_WAIT_S = 5.0  # StreamSession.close: how long the server may take to end the call


class NNServeError(Exception):
    """A failed RPC: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ServingStatus(enum.StrEnum):
    """grpc.health.v1 serving status."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classification:
    """The answer for one row or image."""

    label: str  # argmax label
    index: int
    scores: tuple[float, ...]  # one per model label, in label order
    top_k: tuple[ClassScore, ...]  # best first


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: str
    labels: tuple[str, ...]
    results: tuple[Classification, ...]  # in request order


@dataclass(frozen=True)
class ExplainOptions:
    """Ask for attention explanations (0: the server's defaults, top 3 at score 0.5)."""

    top_k: int = 0
    threshold: float = 0.0


@dataclass(frozen=True)
class AttendedEvent:
    position: int
    token: str
    weight: float  # attention weight


@dataclass(frozen=True)
class Explanation:
    """A flagged event and the events it attended to most (highest weight first)."""

    position: int
    token: str
    score: float  # its position score
    attended: tuple[AttendedEvent, ...]


@dataclass(frozen=True)
class SequenceScores:
    """The answer for one sequence."""

    label: str  # sequence-level label (argmax)
    index: int
    scores: tuple[float, ...]  # one per model label
    length: int
    position_scores: tuple[float, ...]  # P(anomalous) per step, when asked for
    steps: tuple[str | int, ...]  # the tokens / ids sent (empty for numeric steps)
    explanations: tuple[Explanation, ...] = ()  # when explain was asked for


@dataclass(frozen=True)
class SequenceResult:
    model: str
    version: str
    labels: tuple[str, ...]
    results: tuple[SequenceScores, ...]  # in request order


@dataclass(frozen=True)
class StreamEventScore:
    """One event scored in a streaming session."""

    position: int  # 0-based index of the event in the session
    event: str | int  # the event name or token id sent
    score: float  # P(anomalous) of this event
    label: str  # the running sequence verdict after this event
    scores: tuple[float, ...]  # sequence scores after this event, one per model label


@dataclass(frozen=True)
class ShadowComparison:
    """The serving version's scores against its shadow version's, on the same requests."""

    serving_version: str
    shadow_version: str
    compared_rows: int  # since the shadow was set
    dropped_requests: int  # not mirrored: the shadow queue was full, or the shadow failed
    window_rows: int  # the last compared rows the next three figures cover
    agreement: float  # share of rows with the same top class or verdict
    max_abs_difference: float
    p99_abs_difference: float


@dataclass(frozen=True)
class Route:
    """Which version of a model serves requests naming none, and which one shadows it."""

    model: str
    serving_version: str
    shadow_version: str  # "" when none
    pinned: bool  # serving_version was pinned by a promote


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: str
    family: str
    task: str  # classify | sequence
    labels: tuple[str, ...]
    feature_names: tuple[str, ...]  # tabular classify models
    vocabulary: tuple[str, ...]  # sequence models, index = token id
    max_length: int
    provider: str  # execution provider in use
    ready: bool
    model_json: dict[str, Any]  # the full model.json ({} if the server sent none)
    shadow: ShadowComparison | None = None  # while the model has a shadow version


# ---------------------------------------------------------------- encoding


def _tabular_rows(
    rows: Sequence[Mapping[str, float]] | np.ndarray,
) -> list[nnserve_pb2.TabularRow]:
    if isinstance(rows, np.ndarray):
        matrix = np.atleast_2d(np.asarray(rows, dtype=np.float32))  # (N, features)
        if matrix.ndim != 2:
            raise ValueError(f"tabular rows must be 1-D or 2-D, got shape {rows.shape}")
        return [nnserve_pb2.TabularRow(values=row.tolist()) for row in matrix]
    return [
        nnserve_pb2.TabularRow(named={str(k): float(v) for k, v in row.items()}) for row in rows
    ]


def _images(images: np.ndarray) -> list[nnserve_pb2.Image]:
    """(H, W) is one image; (N, H, W) and (N, C, H, W) are batches.

    uint8 arrays are 0..255 pixels (the server scales them); any other numeric dtype
    is taken as pixels already in the model's range.
    """
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[np.newaxis]  # (1, H, W)
    if array.ndim not in (3, 4):
        raise ValueError(f"images must be (H, W), (N, H, W) or (N, C, H, W), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"images must be numeric, got dtype {array.dtype}")
    out = []
    for image in array:  # (H, W) or (C, H, W)
        shape = list(image.shape)
        if array.dtype == np.uint8:
            out.append(nnserve_pb2.Image(shape=shape, uint8_pixels=image.tobytes(order="C")))
        else:
            values = image.astype(np.float32).ravel(order="C").tolist()
            out.append(
                nnserve_pb2.Image(shape=shape, float_pixels=nnserve_pb2.FloatPixels(values=values))
            )
    return out


def _sequence_input(steps: Sequence[Any] | np.ndarray) -> tuple[nnserve_pb2.SequenceInput, tuple]:
    """Tokens (str), token ids (int) or numeric steps (2-D float array: length x features)."""
    if isinstance(steps, np.ndarray) and steps.dtype.kind == "f":
        if steps.ndim != 2:
            raise ValueError(f"numeric steps must be (length, features), got {steps.shape}")
        numeric = nnserve_pb2.NumericSteps(
            features=steps.shape[1], values=steps.astype(np.float32).ravel().tolist()
        )
        return nnserve_pb2.SequenceInput(numeric=numeric), ()
    items = steps.tolist() if isinstance(steps, np.ndarray) else list(steps)
    if all(isinstance(s, str) for s in items):
        return nnserve_pb2.SequenceInput(tokens=nnserve_pb2.TokenStrings(tokens=items)), tuple(
            items
        )
    if all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in items):
        ids = [int(s) for s in items]
        return nnserve_pb2.SequenceInput(token_ids=nnserve_pb2.TokenIds(ids=ids)), tuple(ids)
    raise TypeError("a sequence must be all token strings or all integer token ids")


# ---------------------------------------------------------------- decoding


def _classification(pb: nnserve_pb2.Classification) -> Classification:
    return Classification(
        label=pb.label,
        index=pb.index,
        scores=tuple(pb.scores),
        top_k=tuple(ClassScore(label=c.label, index=c.index, score=c.score) for c in pb.top_k),
    )


def _sequence_scores(pb: nnserve_pb2.SequenceResult, steps: tuple) -> SequenceScores:
    return SequenceScores(
        label=pb.label,
        index=pb.index,
        scores=tuple(pb.scores),
        length=pb.length,
        position_scores=tuple(pb.position_scores),
        steps=steps,
        explanations=tuple(
            Explanation(
                position=e.position,
                token=e.token,
                score=e.score,
                attended=tuple(AttendedEvent(a.position, a.token, a.weight) for a in e.attended),
            )
            for e in pb.explanations
        ),
    )


def _description(pb: nnserve_pb2.DescribeModelResponse) -> ModelDescription:
    return ModelDescription(
        name=pb.model_name,
        version=pb.model_version,
        family=pb.family,
        task=pb.task,
        labels=tuple(pb.labels),
        feature_names=tuple(pb.feature_names),
        vocabulary=tuple(pb.vocabulary),
        max_length=pb.max_length,
        provider=pb.provider,
        ready=pb.ready,
        model_json=json.loads(pb.model_json) if pb.model_json else {},
        shadow=_shadow(pb.shadow) if pb.HasField("shadow") else None,
    )


def _shadow(pb: nnserve_pb2.ShadowComparison) -> ShadowComparison:
    return ShadowComparison(
        serving_version=pb.serving_version,
        shadow_version=pb.shadow_version,
        compared_rows=pb.compared_rows,
        dropped_requests=pb.dropped_requests,
        window_rows=pb.window_rows,
        agreement=pb.agreement,
        max_abs_difference=pb.max_abs_difference,
        p99_abs_difference=pb.p99_abs_difference,
    )


def _route(pb: nnserve_pb2.RouteResponse) -> Route:
    return Route(pb.model_name, pb.serving_version, pb.shadow_version, pb.pinned)


def _tabular_request(
    model: str, rows: Sequence[Mapping[str, float]] | np.ndarray, top_k: int, version: str
) -> nnserve_pb2.ClassifyRequest:
    return nnserve_pb2.ClassifyRequest(
        model_name=model, model_version=version, rows=_tabular_rows(rows), top_k=top_k
    )


def _images_request(
    model: str, images: np.ndarray, top_k: int, version: str
) -> nnserve_pb2.ClassifyRequest:
    return nnserve_pb2.ClassifyRequest(
        model_name=model, model_version=version, images=_images(images), top_k=top_k
    )


def _unknown_service(err: NNServeError) -> ServingStatus:
    """Health Check answers NOT_FOUND for a service it does not know; anything else raises."""
    if err.code == grpc.StatusCode.NOT_FOUND:
        return ServingStatus.SERVICE_UNKNOWN
    raise err


def _classify_result(response: nnserve_pb2.ClassifyResponse) -> ClassifyResult:
    return ClassifyResult(
        model=response.model_name,
        version=response.model_version,
        labels=tuple(response.labels),
        results=tuple(_classification(r) for r in response.results),
    )


def _sequence_request(
    model: str,
    sequences: Sequence[Sequence[str] | Sequence[int] | np.ndarray],
    per_position: bool,
    version: str,
    explain: ExplainOptions | None = None,
) -> tuple[nnserve_pb2.SequenceRequest, list[tuple]]:
    """The request and each sequence's steps as sent (kept for the result)."""
    encoded = [_sequence_input(s) for s in sequences]
    request = nnserve_pb2.SequenceRequest(
        model_name=model,
        model_version=version,
        sequences=[pb for pb, _ in encoded],
        per_position=per_position,
    )
    if explain is not None:
        request.explain = True
        request.explain_top_k = explain.top_k
        request.explain_threshold = explain.threshold
    return request, [steps for _, steps in encoded]


def _sequence_result(response: nnserve_pb2.SequenceResponse, steps: list[tuple]) -> SequenceResult:
    if len(response.results) != len(steps):
        raise NNServeError(
            grpc.StatusCode.INTERNAL,
            f"server returned {len(response.results)} results for {len(steps)} sequences",
        )
    return SequenceResult(
        model=response.model_name,
        version=response.model_version,
        labels=tuple(response.labels),
        results=tuple(_sequence_scores(r, s) for r, s in zip(response.results, steps, strict=True)),
    )


Batch = Sequence[Mapping[str, float]] | np.ndarray  # tabular rows, or images (images=True)


def _classify_stream_requests(
    model: str, batches: Iterable[Batch], top_k: int, version: str, images: bool
) -> Iterator[nnserve_pb2.ClassifyStreamRequest]:
    """One ClassifyStream message per batch, its id the batch's index."""
    for index, batch in enumerate(batches):
        request = (
            _images_request(model, np.asarray(batch), top_k, version)
            if images
            else _tabular_request(model, batch, top_k, version)
        )
        yield nnserve_pb2.ClassifyStreamRequest(id=str(index), request=request)


def _stream_error(error: nnserve_pb2.StreamError) -> NNServeError:
    code = getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN)
    return NNServeError(code, error.message)


def _classify_answer(
    answer: nnserve_pb2.ClassifyStreamResponse,
) -> tuple[int, ClassifyResult | NNServeError]:
    if answer.HasField("error"):
        return int(answer.id), _stream_error(answer.error)
    return int(answer.id), _classify_result(answer.response)


def _serving_status(response: health_pb2.HealthCheckResponse) -> ServingStatus:
    return ServingStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


# ---------------------------------------------------------------- client

PathLike = str | os.PathLike[str]


def _read(path: PathLike | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _credentials(
    tls: bool, ca: PathLike | None, cert: PathLike | None, key: PathLike | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for plaintext (shared by the blocking and asyncio clients)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key")
    if not (tls or ca or cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def _tls_options(server_name: str | None) -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def _bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def open_channel(
    address: str,
    *,
    tls: bool = False,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to ``address``: plaintext, or TLS when ``tls`` (or any of ``ca``, ``cert``,
    ``key``) is given. ``ca``: PEM roots to trust (default: the system's); ``cert`` +
    ``key``: the client certificate for mutual TLS; ``server_name``: the name to verify
    in the server certificate when it differs from the address (e.g. 127.0.0.1 inside a
    container whose certificate names the service)."""
    credentials = _credentials(tls, ca, cert, key)
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials, options=_tls_options(server_name))


class StreamSession:
    """A streaming session on the server (nnserve.v1 Stream): send events, get each
    event's score and the running verdict back. The server keeps the model's state, so
    each event costs one model step. Resume it later by ``session_id`` (within the
    server's session TTL) with :meth:`NNServeClient.resume_stream`."""

    def __init__(
        self,
        stub: nnserve_pb2_grpc.PredictorStub,
        first: nnserve_pb2.StreamRequest,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> None:
        self._requests: queue.SimpleQueue[nnserve_pb2.StreamRequest | None] = queue.SimpleQueue()
        self._requests.put(first)
        # No deadline: a session's call lasts as long as the stream of events does.
        self._call = stub.Stream(iter(self._requests.get, None), metadata=metadata)
        self._responses: Iterator[nnserve_pb2.StreamResponse] = self._call
        response = self._next()
        self.session_id: str = response.session_id
        self.model: str = response.model_name
        self.version: str = response.model_version
        self.labels: tuple[str, ...] = tuple(response.labels)
        self.events_seen: int = response.events_seen
        self._open = True

    def _next(self) -> nnserve_pb2.StreamResponse:
        try:
            return next(self._responses)
        except grpc.RpcError as err:
            self._open = False
            raise NNServeError(err.code(), err.details() or "") from None  # type: ignore[attr-defined]
        except StopIteration:
            self._open = False
            raise NNServeError(grpc.StatusCode.UNKNOWN, "the server ended the stream") from None

    def send(self, events: Sequence[str] | Sequence[int]) -> list[StreamEventScore]:
        """Score events in order (names or token ids, at most the server's
        max_stream_events per call); returns one score per event."""
        if not self._open:
            raise NNServeError(grpc.StatusCode.FAILED_PRECONDITION, "the stream is closed")
        request = nnserve_pb2.StreamRequest()
        sent_events: list[str | int] = list(events)
        if all(isinstance(e, int | np.integer) for e in events):
            request.token_ids.ids.extend(int(e) for e in events)
        else:
            request.tokens.tokens.extend(str(e) for e in events)
        self._requests.put(request)
        response = self._next()
        self.events_seen = response.events_seen
        return [
            StreamEventScore(e.position, sent, e.score, e.label, tuple(e.scores))
            for e, sent in zip(response.events, sent_events, strict=True)
        ]

    def close(self, *, end_session: bool = False) -> None:
        """End the call. ``end_session=True`` also ends the session on the server (its
        slot is freed and it cannot be resumed); otherwise it stays resumable."""
        if not self._open:
            return
        self._open = False
        if end_session:
            self._requests.put(nnserve_pb2.StreamRequest(close=True))
        self._requests.put(None)  # half-close: the server ends the call once it let go
        # Wait for that, so a resume finds the session free; a server that does not end
        # the call within CLOSE_WAIT_S gets it cancelled (the session then stays idle).
        timer = threading.Timer(CLOSE_WAIT_S, self._call.cancel)
        timer.start()
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise NNServeError(err.code(), err.details() or "") from None  # type: ignore[attr-defined]
        finally:
            timer.cancel()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NNServeClient:
    """Blocking client for one nnserve process (classify or sequence service)."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        """``address`` is host:port; ``timeout`` (seconds) is the deadline of each call.

        ``tls``, ``ca``, ``cert``, ``key``, ``server_name``: see :func:`open_channel`.
        ``token``: sent as ``authorization: Bearer <token>`` on every call. Pass
        ``channel`` to use a channel you configured yourself; it is then yours to close.
        """
        self.address = address
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else open_channel(address, tls=tls, ca=ca, cert=cert, key=key, server_name=server_name)
        )
        self._metadata = _bearer(token)
        self._predictor = nnserve_pb2_grpc.PredictorStub(self._channel)
        self._routing = nnserve_pb2_grpc.RoutingStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> NNServeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            # Every RpcError a blocking stub raises is also a grpc.Call.
            raise NNServeError(err.code(), err.details() or "") from None  # type: ignore[attr-defined]

    def classify_tabular(
        self,
        model: str,
        rows: Sequence[Mapping[str, float]] | np.ndarray,
        top_k: int = 1,
        *,
        version: str = "",
    ) -> ClassifyResult:
        """Classify tabular rows: feature-name -> value mappings (every feature, any
        order) or a (rows, features) array in the model's feature order."""
        return self._classify(_tabular_request(model, rows, top_k, version))

    def classify_images(
        self, model: str, images: np.ndarray, top_k: int = 1, *, version: str = ""
    ) -> ClassifyResult:
        """Classify images: (H, W) one image, (N, H, W) or (N, C, H, W) a batch. uint8
        means 0..255 pixels; float means pixels already in the model's range."""
        return self._classify(_images_request(model, images, top_k, version))

    def _classify(self, request: nnserve_pb2.ClassifyRequest) -> ClassifyResult:
        return _classify_result(self._call(self._predictor.Classify, request))

    def score_sequences(
        self,
        model: str,
        sequences: Sequence[Sequence[str] | Sequence[int] | np.ndarray],
        per_position: bool = True,
        *,
        version: str = "",
        explain: ExplainOptions | None = None,
    ) -> SequenceResult:
        """Score variable-length sequences of event names, token ids, or numeric
        (length, features) float arrays. With ``explain``, each flagged event comes
        with the events it attended to most (models with an explain graph)."""
        request, steps = _sequence_request(model, sequences, per_position, version, explain)
        return _sequence_result(self._call(self._predictor.Sequence, request), steps)

    def classify_stream(
        self,
        model: str,
        batches: Iterable[Batch],
        top_k: int = 1,
        *,
        version: str = "",
        images: bool = False,
        timeout: float | None = None,
    ) -> Iterator[tuple[int, ClassifyResult | NNServeError]]:
        """Classify many batches on one ClassifyStream call: for throughput, without the
        cost of a call per batch. ``batches`` (tabular rows as for
        :meth:`classify_tabular`, or images as for :meth:`classify_images` with
        ``images=True``) are sent as they are read, while the server answers; yields
        ``(index of the batch, its result or the NNServeError it failed with)`` as each
        finishes, not necessarily in order. ``timeout`` bounds the whole call (default:
        none); a failure of the call itself raises NNServeError."""
        requests = _classify_stream_requests(model, batches, top_k, version, images)
        call = self._predictor.ClassifyStream(requests, timeout=timeout, metadata=self._metadata)
        try:
            for answer in call:
                yield _classify_answer(answer)
        except grpc.RpcError as err:
            raise NNServeError(err.code(), err.details() or "") from None  # type: ignore[attr-defined]
        finally:
            call.cancel()  # the caller stopped early: end the call (no-op once it ended)

    def stream(self, model: str, *, version: str = "") -> StreamSession:
        """Open a streaming session on a sequence model with a step graph (lstm)."""
        first = nnserve_pb2.StreamRequest(model_name=model, model_version=version)
        return StreamSession(self._predictor, first, self._metadata)

    def resume_stream(self, session_id: str) -> StreamSession:
        """Continue a session whose call ended, with its state (NOT_FOUND once expired)."""
        first = nnserve_pb2.StreamRequest(session_id=session_id)
        return StreamSession(self._predictor, first, self._metadata)

    def describe(self, model: str, *, version: str = "") -> ModelDescription:
        request = nnserve_pb2.DescribeModelRequest(model_name=model, model_version=version)
        return _description(self._call(self._predictor.DescribeModel, request))

    def set_shadow(self, model: str, version: str) -> Route:
        """Make ``version`` (ready) the model's shadow version; ``""`` removes the shadow.
        Needs the admin role when the server has tokens."""
        request = nnserve_pb2.SetShadowRequest(model_name=model, shadow_version=version)
        return _route(self._call(self._routing.SetShadow, request))

    def promote_shadow(self, model: str) -> Route:
        """The shadow version serves from now on (pinned); the model has no shadow."""
        request = nnserve_pb2.PromoteShadowRequest(model_name=model)
        return _route(self._call(self._routing.PromoteShadow, request))

    def health(self, service: str = "") -> ServingStatus:
        """grpc.health.v1 Check: ``""`` for the whole server, a model name for one model.

        A service the server does not know is SERVICE_UNKNOWN; an unreachable server
        raises NNServeError (UNAVAILABLE / DEADLINE_EXCEEDED).
        """
        try:
            response = self._call(
                self._health.Check, health_pb2.HealthCheckRequest(service=service)
            )
        except NNServeError as err:
            return _unknown_service(err)
        return _serving_status(response)
