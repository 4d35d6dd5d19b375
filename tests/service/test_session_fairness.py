"""Streaming-session fairness against real servers: a per-client cap on sessions held
(per token name with tokens on, else per IP address) and an idle timeout for a Stream
call that sends nothing, each refusal clear and counted by reason."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nnserve_client import NNServeClient, NNServeError
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.ops import auth
from services.rpc.stream import peer_address
from tests.support.metrics import read_metrics
from tests.support.servers import RunningServer, make_settings, running_server

Code = grpc.StatusCode
ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40


def _refusals(server: RunningServer, reason: str) -> float:
    return read_metrics(server).total("nnserve_session_refusals_total", reason=reason)


# Behind the native front end Stream calls come from its Unix socket: no client address
# (per-client caps there need tokens, docs/operations.md).
@pytest.mark.frontends("aio")
def test_sessions_are_capped_per_client_address(scratch_repository: Path) -> None:
    """max_sessions_per_client=2 (server-wide max_sessions 50): a third session from the
    same address is RESOURCE_EXHAUSTED naming the limit, while held sessions keep
    working; closing one frees its slot. Counted by reason."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["lstm"],
        max_sessions=50, max_sessions_per_client=2,
    )  # fmt: skip
    with running_server(settings) as server, NNServeClient(server.address, timeout=30) as c:
        token = c.describe("lstm").vocabulary[2]
        first, second = c.stream("lstm"), c.stream("lstm")
        with pytest.raises(NNServeError) as err:
            c.stream("lstm")  # a new connection changes nothing: the address is the key
        assert err.value.code == Code.RESOURCE_EXHAUSTED
        message = err.value.args[0]
        assert "holds 2 streaming sessions (max_sessions_per_client)" in message, message
        assert len(message) < 300
        assert _refusals(server, "max_sessions_per_client") == 1
        assert first.send([token])[0].position == 0  # the held ones still work
        first.close(end_session=True)
        third = c.stream("lstm")
        assert third.send([token])[0].position == 0
        # A session released (not ended) still counts: it is resumable, so it is held.
        second.close()
        with pytest.raises(NNServeError) as err:
            c.stream("lstm")
        assert err.value.code == Code.RESOURCE_EXHAUSTED
        resumed = c.resume_stream(second.session_id)  # resuming needs no new slot
        assert resumed.send([token])[0].position == 0
        resumed.close(end_session=True)
        third.close(end_session=True)
        assert len(server.server.sessions) == 0


@pytest.fixture
def two_tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    entries = [
        {"name": name, "sha256": auth.token_hash(token), "roles": ["infer"]}
        for name, token in (("alice", ALICE), ("bob", BOB))
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


def test_with_tokens_the_cap_is_per_token_name(scratch_repository: Path, two_tokens: Path) -> None:
    """Both clients on one address: alice at her cap of 2 is refused, bob still opens his
    two (keyed by token name, not address)."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["lstm"],
        max_sessions=50, max_sessions_per_client=2, tokens_file=two_tokens,
    )  # fmt: skip
    with (
        running_server(settings) as server,
        NNServeClient(server.address, timeout=30, token=ALICE) as alice,
        NNServeClient(server.address, timeout=30, token=BOB) as bob,
    ):
        held = [alice.stream("lstm"), alice.stream("lstm")]
        with pytest.raises(NNServeError) as err:
            alice.stream("lstm")
        assert err.value.code == Code.RESOURCE_EXHAUSTED
        assert "max_sessions_per_client" in err.value.args[0]
        held += [bob.stream("lstm"), bob.stream("lstm")]
        with pytest.raises(NNServeError) as err:
            bob.stream("lstm")
        assert err.value.code == Code.RESOURCE_EXHAUSTED
        assert _refusals(server, "max_sessions_per_client") == 2
        for session in held:
            session.close(end_session=True)


def _requests(box: queue.SimpleQueue[npb.StreamRequest | None]) -> Iterator[npb.StreamRequest]:
    return iter(box.get, None)


def test_an_idle_call_ends_and_its_session_stays_resumable(scratch_repository: Path) -> None:
    """session_idle_seconds=0.5: a Stream call that sends one message and then nothing
    ends with DEADLINE_EXCEEDED (well before the client's own deadline) and a message
    naming the setting; the session is released, resumable by id with its state, and a
    call that keeps sending is never cut. A call that never sends ends the same way."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["lstm"],
        session_idle_seconds=0.5, session_ttl_seconds=30,
    )  # fmt: skip
    with running_server(settings) as server:
        stub = npb_grpc.PredictorStub(server.channel())
        box: queue.SimpleQueue[npb.StreamRequest | None] = queue.SimpleQueue()
        box.put(npb.StreamRequest(model_name="lstm", token_ids=npb.TokenIds(ids=[2, 3])))
        started = time.monotonic()
        call = stub.Stream(_requests(box), timeout=30)
        first = next(call)
        assert first.events_seen == 2
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        waited = time.monotonic() - started
        box.put(None)
        assert err.value.code() == Code.DEADLINE_EXCEEDED
        details = err.value.details() or ""
        assert "for 0.5 s (session_idle_seconds)" in details, details
        assert "resumable by its id" in details
        assert 0.4 < waited < 10
        assert _refusals(server, "idle_timeout") == 1
        session = server.server.sessions._sessions[first.session_id]
        assert not session.attached  # released: it may expire now

        # Resumed with its state; a call that sends every 0.2 s is never cut, and an
        # empty message (no events) is enough to keep a quiet session attached.
        box = queue.SimpleQueue()
        box.put(npb.StreamRequest(session_id=first.session_id))
        call = stub.Stream(_requests(box), timeout=30)
        assert next(call).events_seen == 2
        for i in range(6):
            time.sleep(0.2)
            events = [4] if i % 2 else []
            box.put(npb.StreamRequest(token_ids=npb.TokenIds(ids=events)))
            assert next(call).events_seen == 2 + (i + 1) // 2
        box.put(npb.StreamRequest(close=True))
        assert next(call).closed
        box.put(None)

        # No first message at all: the call ends the same way, holding no session.
        box = queue.SimpleQueue()
        call = stub.Stream(_requests(box), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        box.put(None)
        assert err.value.code() == Code.DEADLINE_EXCEEDED
        assert "resumable" not in (err.value.details() or "")
        assert _refusals(server, "idle_timeout") == 2
        assert len(server.server.sessions) == 0


def test_peer_addresses_key_clients_and_unix_peers_do_not() -> None:
    """The port changes with every connection, so the key is the address alone; the
    native front end forwards every Stream call from 'unix:', which names no client."""
    assert peer_address("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert peer_address("ipv6:%5B::1%5D:51234") == "::1"
    assert peer_address("ipv6:[2001:db8::5]:443") == "2001:db8::5"
    assert peer_address("unix:") is None
    assert peer_address("unix:/tmp/nnserve-fallback/grpc.sock") is None
    assert peer_address("garbage") is None


def test_the_cli_keeps_a_quiet_followed_file_attached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`logs --follow FILE` sends an empty message when the file stays quiet, so the
    server's idle timeout does not end its call."""
    from nnserve_client import __main__ as cli

    monkeypatch.setattr(cli, "FOLLOW_KEEPALIVE_S", 0.3)
    log = tmp_path / "app.log"
    log.write_text("a\n")
    stop = threading.Event()
    lines = cli._appended_lines(str(log), stop)
    assert next(lines) == ["a"]
    started = time.monotonic()
    assert next(lines) == []  # nothing appended: a keepalive tick
    assert 0.25 < time.monotonic() - started < 5
    with log.open("a") as f:
        f.write("b\n")
    assert next(lines) == ["b"]
    stop.set()
