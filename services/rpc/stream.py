"""The Stream RPC (nnserve.v1 Predictor/Stream): one call, one session, any number of
messages; the session store (services/core/sessions.py) keeps the state between them.

Fairness: sessions are counted per client (`client_key`: the token's name with tokens
on, else the peer's IP address) against max_sessions_per_client, and a call that sends
no message for session_idle_seconds ends with DEADLINE_EXCEEDED, its session released
(resumable by id until the TTL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import unquote

import numpy as np

from contract.model import ModelSpec
from protos import nnserve_pb2 as npb
from services.core.dataplane import DataPlane
from services.core.registry import LoadedModel
from services.core.sessions import Session, SessionStore
from services.core.stepping import Stepper
from services.errors import DeadlineExpired, InvalidInput, shown
from services.ops.calls import CURRENT
from services.ops.metrics import Metrics

MAX_CLIENT_KEY_CHARS = 128


def peer_address(peer: str) -> str | None:
    """The IP address in a gRPC peer string (`ipv4:10.0.0.7:5123`,
    `ipv6:%5B::1%5D:5123`), without the port, which changes with every connection;
    None for peers that name no address (`unix:`, as every call the native front end
    forwards arrives)."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        host = rest.rpartition(":")[0]
    elif scheme == "ipv6":
        host = unquote(rest).rpartition(":")[0].strip("[]")
    else:
        return None
    return host[:MAX_CLIENT_KEY_CHARS] or None


def client_key(peer: str) -> str | None:
    """Who a Stream call is, for max_sessions_per_client: the token's name (tokens on),
    else the peer's IP address, else None (cannot tell clients apart)."""
    call = CURRENT.get()
    if call is not None and call.principal is not None:
        return f"token:{call.principal[:MAX_CLIENT_KEY_CHARS]}"
    address = peer_address(peer)
    return None if address is None else f"ip:{address}"


def decode_events(request: npb.StreamRequest, spec: ModelSpec, max_events: int) -> list[int]:
    """A message's events as token ids; INVALID_ARGUMENT for unknown tokens or too many."""
    kind = request.WhichOneof("events")
    vocabulary = spec.sequence.vocabulary if spec.sequence else ()
    if kind is None:
        return []
    count = len(request.token_ids.ids) if kind == "token_ids" else len(request.tokens.tokens)
    if count > max_events:
        raise InvalidInput(
            f"message has {count} events; at most {max_events} per message (max_stream_events)"
        )
    if kind == "token_ids":
        ids = list(request.token_ids.ids)
        bad = [i for i in ids if not 0 <= i < len(vocabulary)]
        if bad:
            raise InvalidInput(
                f"token id {bad[0]} is outside the vocabulary (0..{len(vocabulary) - 1})"
            )
        return ids
    index = spec.sequence.token_index if spec.sequence else {}
    unknown = [t for t in request.tokens.tokens if t not in index]
    if unknown:
        raise InvalidInput(f"unknown token {shown(unknown[0])}; DescribeModel lists the vocabulary")
    return [index[t] for t in request.tokens.tokens]


class StreamService:
    """The Stream RPC: one call, one session, any number of messages."""

    METHOD = "Stream"

    def __init__(
        self,
        plane: DataPlane,
        store: SessionStore,
        metrics: Metrics,
        max_events: int,
        idle_seconds: float | None = None,
    ) -> None:
        self._plane = plane
        self._store = store
        self._metrics = metrics
        self._max_events = max_events
        self._idle = idle_seconds
        self._idled = metrics.session_refusals.labels("idle_timeout")

    async def serve(
        self,
        requests: AsyncIterator[npb.StreamRequest],
        deadline: float | None,
        client: str | None = None,
    ) -> AsyncIterator[npb.StreamResponse]:
        session: Session | None = None
        started = False
        messages = aiter(requests)
        try:
            while True:
                try:
                    request = await self._next(messages, session)
                except StopAsyncIteration:
                    return
                if not started:
                    session, started = self._start(request), True
                elif request.model_name or request.model_version or request.session_id:
                    raise InvalidInput(
                        "model_name, model_version and session_id belong in the first message"
                    )
                response, session = await self._message(request, session, deadline, client)
                yield response
                if response.closed:
                    return
        finally:
            if session is not None and session.attached:
                self._store.release(session)

    async def _next(
        self, messages: AsyncIterator[npb.StreamRequest], session: Session | None
    ) -> npb.StreamRequest:
        """The call's next message, or DEADLINE_EXCEEDED after session_idle_seconds
        without one (a call that sends nothing must not hold its session for ever)."""
        if self._idle is None:
            return await anext(messages)
        try:
            async with asyncio.timeout(self._idle):
                return await anext(messages)
        except TimeoutError:
            self._idled.inc()
            kept = (
                f"; the session stays resumable by its id for {self._store.ttl:g} s"
                if session is not None and session.attached
                else ""
            )
            raise DeadlineExpired(
                f"no message on this Stream call for {self._idle:g} s (session_idle_seconds){kept}"
            ) from None

    def _start(self, request: npb.StreamRequest) -> Session | None:
        if request.session_id and request.model_name:
            raise InvalidInput("give model_name to open a session or session_id to resume one")
        if request.session_id:
            return self._store.resume(request.session_id)
        if not request.model_name:
            raise InvalidInput("the first message needs model_name (open) or session_id (resume)")
        return None  # opened inside the first message's request scope

    async def _message(
        self,
        request: npb.StreamRequest,
        session: Session | None,
        deadline: float | None,
        client: str | None,
    ) -> tuple[npb.StreamResponse, Session]:
        if session is None:
            name, version = request.model_name, request.model_version
        else:
            name, version = session.model, str(session.version)
        async with self._plane.request(self.METHOD, name, version, deadline) as scope:
            model = scope.model
            stepper = model.stepper
            if stepper is None:
                raise InvalidInput(
                    f"model {model.name!r} has no step graph for streaming; use Sequence"
                )
            tokens = decode_events(request, model.spec, self._max_events)
            response = npb.StreamResponse(model_name=model.name, model_version=str(model.version))
            if session is None:
                session = self._store.open(model, stepper, client)
                response.labels.extend(model.spec.labels)
                try:
                    return await self._score(
                        request, response, session, model, stepper, tokens, deadline
                    )
                except BaseException:
                    self._store.close(session)  # the client never learned its id
                    raise
            return await self._score(request, response, session, model, stepper, tokens, deadline)

    async def _score(
        self,
        request: npb.StreamRequest,
        response: npb.StreamResponse,
        session: Session,
        model: LoadedModel,
        stepper: Stepper,
        tokens: list[int],
        deadline: float | None,
    ) -> tuple[npb.StreamResponse, Session]:
        """Step each event in order; commit the session's state after the last one."""
        response.session_id = session.id
        state, position = session.state, session.events
        labels = model.spec.labels
        for token in tokens:
            score, scores, state = await stepper.step(token, state, deadline)
            best = int(np.argmax(scores))
            response.events.add(
                position=position,
                score=score,
                label=labels[best],
                index=best,
                scores=scores.tolist(),
            )
            position += 1
        session.state, session.events = state, position  # the whole message, at once
        if tokens:
            self._metrics.session_events.labels(model.name, str(model.version)).inc(len(tokens))
        response.events_seen = session.events
        if request.close:
            self._store.close(session)
            session.attached = False
            response.closed = True
        return response, session
