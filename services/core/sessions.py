"""Streaming sessions (nnserve.v1 Predictor/Stream): per-session model state kept on the
server, so each new event of a log stream costs one step of the model instead of
re-scoring the whole sequence.

A session holds the step graph's state arrays (services/core/stepping.py) for one model
version. The first message of a Stream call opens a session or resumes one by its id;
every message's events are scored in order, each event one step batched with the
events of other sessions. A message is applied whole or not at all: its state is
committed after its last event, so a message that fails leaves the session as it was.

Bounds: max_sessions sessions at once (RESOURCE_EXHAUSTED beyond), and
max_sessions_per_client per client (its token's name with tokens on, else its IP
address; a client the server cannot tell apart, such as every call behind the native
front end's Unix socket, only meets max_sessions); max_stream_events events per
message; ids of 24 URL-safe characters from `secrets` (unguessable; an unknown or
malformed id is NOT_FOUND). A session is attached to at most one call; once the call
ends (the Stream RPC also ends a call that sends nothing for session_idle_seconds) it
stays resumable for session_ttl_seconds of idleness, then a periodic sweep (or the next
resume attempt) drops it and counts it as expired. Refusals are counted by reason in
nnserve_session_refusals_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from services.core.registry import LoadedModel
from services.core.stepping import State, Stepper
from services.errors import FailedPrecondition, ServingError, shown
from services.ops.metrics import Metrics

log = logging.getLogger(__name__)

SESSION_ID_BYTES = 18  # secrets.token_urlsafe(18): 24 characters, 144 random bits
MAX_SESSION_ID_CHARS = 64


class SessionNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class TooManySessions(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(eq=False, slots=True)
class Session:
    id: str
    model: str
    version: int
    state: State
    last_used: float  # time.monotonic() when a call last released it
    events: int = 0  # events scored so far (the next event's position)
    attached: bool = False  # a Stream call is using it
    owner: str | None = None  # the client that opened it (max_sessions_per_client)


class SessionStore:
    """All sessions of one server, with the TTL, the bounds and the metrics."""

    def __init__(
        self,
        ttl_seconds: float,
        max_sessions: int,
        metrics: Metrics,
        max_per_client: int | None = None,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client or max_sessions
        self._metrics = metrics
        self._sessions: dict[str, Session] = {}
        self._owned: dict[str, set[Session]] = {}  # client -> its sessions (none: no entry)
        self._refused = {
            reason: metrics.session_refusals.labels(reason)
            for reason in ("max_sessions", "max_sessions_per_client", "not_found", "attached")
        }

    def __len__(self) -> int:
        return len(self._sessions)

    def held_by(self, client: str) -> int:
        return len(self._owned.get(client, ()))

    def open(self, model: LoadedModel, stepper: Stepper, client: str | None = None) -> Session:
        """A new session for `client` (None: a client the server cannot tell apart)."""
        if client is not None and self.held_by(client) >= self.max_per_client:
            self._sweep(list(self._owned[client]))  # its expired sessions make room first
            if self.held_by(client) >= self.max_per_client:
                self._refused["max_sessions_per_client"].inc()
                raise TooManySessions(
                    f"this client holds {self.max_per_client} streaming sessions "
                    "(max_sessions_per_client); close sessions you no longer need "
                    "(close=true), resume one by its id, or retry after idle ones expire "
                    f"({self.ttl:g} s TTL)"
                )
        if len(self._sessions) >= self.max_sessions:
            self.sweep()  # idle sessions past their TTL make room before we refuse
        if len(self._sessions) >= self.max_sessions:
            self._refused["max_sessions"].inc()
            raise TooManySessions(
                f"server holds {self.max_sessions} streaming sessions (max_sessions); "
                "close sessions you no longer need (close=true) or retry after idle ones "
                f"expire ({self.ttl:g} s TTL)"
            )
        session = Session(
            id=secrets.token_urlsafe(SESSION_ID_BYTES),
            model=model.name,
            version=model.version,
            state=stepper.initial_state(),
            last_used=time.monotonic(),
            attached=True,
            owner=client,
        )
        self._sessions[session.id] = session
        if client is not None:
            self._owned.setdefault(client, set()).add(session)
        self._metrics.sessions_open.labels(session.model, str(session.version)).inc()
        return session

    def resume(self, session_id: str) -> Session:
        """Attach an existing session to a call; NOT_FOUND when unknown or expired."""
        session = (
            self._sessions.get(session_id) if len(session_id) <= MAX_SESSION_ID_CHARS else None
        )
        if session is not None and not session.attached and self._expired(session):
            self._drop(session, expired=True)
            session = None
        if session is None:
            self._refused["not_found"].inc()
            raise SessionNotFound(
                f"unknown or expired session {shown(session_id)}; open a new session"
            )
        if session.attached:
            self._refused["attached"].inc()
            raise FailedPrecondition("the session is attached to another Stream call")
        session.attached = True
        return session

    def release(self, session: Session) -> None:
        """The call ended: the session stays resumable until it idles past the TTL."""
        session.attached = False
        session.last_used = time.monotonic()

    def close(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            self._drop(session, expired=False)

    def _expired(self, session: Session, now: float | None = None) -> bool:
        return (now or time.monotonic()) - session.last_used > self.ttl

    def _drop(self, session: Session, expired: bool) -> None:
        del self._sessions[session.id]
        owner = session.owner
        owned = self._owned.get(owner) if owner is not None else None
        if owner is not None and owned is not None:
            owned.discard(session)
            if not owned:
                del self._owned[owner]
        labels = (session.model, str(session.version))
        self._metrics.sessions_open.labels(*labels).dec()
        if expired:
            self._metrics.sessions_expired.labels(*labels).inc()

    def sweep(self) -> int:
        """Drop idle sessions past the TTL; returns how many."""
        return self._sweep(self._sessions.values())

    def _sweep(self, sessions: Iterable[Session]) -> int:
        now = time.monotonic()
        stale = [s for s in sessions if not s.attached and self._expired(s, now)]
        for session in stale:
            self._drop(session, expired=True)
        return len(stale)

    @property
    def sweep_interval(self) -> float:
        return min(max(self.ttl / 4, 0.05), 10.0)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            dropped = self.sweep()
            if dropped:
                log.info("dropped %d streaming sessions idle for over %g s", dropped, self.ttl)


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
