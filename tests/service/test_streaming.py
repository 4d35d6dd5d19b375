"""Streaming sessions (nnserve.v1 Stream) against real servers on the exported lstm:
stepping reproduces the full model, resume continues the state, TTL expiry and the
session bound, step batches shared across streams, bad input, and `logs --follow`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import StatusCode as Code

from contract.model import read_spec
from nnserve_client import NNServeClient, NNServeError
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from tests.support.metrics import read_metrics
from tests.support.paths import ROOT
from tests.support.servers import (
    RunningServer,
    hold_inference_thread,
    make_settings,
    running_server,
)


def stub(server: RunningServer) -> npb_grpc.PredictorStub:
    return npb_grpc.PredictorStub(server.channel())


def client(server: RunningServer) -> NNServeClient:
    return NNServeClient(server.address, timeout=30)


def rows_of(repository: Path) -> list[list[int]]:
    """Golden sequences of the exported lstm: mixed lengths, including 1 (a random
    case) and max_length, as token id lists."""
    spec = read_spec(repository, "lstm", 1)
    rows = []
    for case in spec.goldens:
        tokens, lengths = case.inputs["tokens"], case.inputs["lengths"]
        rows += [tokens[i, : lengths[i]].tolist() for i in range(len(lengths))]
    assert spec.sequence is not None
    lengths = {len(r) for r in rows}
    assert spec.sequence.max_length in lengths and len(lengths) > 5
    short = [*[r for r in rows if len(r) <= 3][:2], [rows[0][0]]]  # length 1 too
    longest = [r for r in rows if len(r) == spec.sequence.max_length][:1]
    return short + rows[:6] + longest


def close_to(actual: list[float], expected: list[float]) -> None:
    # The contract's golden tolerance (atol 1e-4, rtol 1e-3).
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)


def call_error(fn: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()  # type: ignore[operator]
    return err.value


def stream_all(predictor: npb_grpc.PredictorStub, *requests: npb.StreamRequest) -> list:
    return list(predictor.Stream(iter(requests), timeout=30))


# ---------------------------------------------------------------- parity and resume


def test_stepping_reproduces_the_full_model(
    sequence_server: RunningServer, model_repository: Path
) -> None:
    """Per-event scores over the Stream RPC equal the full model's per-position scores
    (Sequence RPC) for the same sequence, and each event's running verdict equals the
    Sequence RPC on the prefix ending there; events sent one or a few per message."""
    rows = rows_of(model_repository)
    with client(sequence_server) as c:
        full = c.score_sequences("lstm", rows, per_position=True)
        for row, expected in zip(rows, full.results, strict=True):
            with c.stream("lstm") as session:
                assert session.labels == full.labels and session.events_seen == 0
                scored = session.send(row[:1])
                for start in range(1, len(row), 3):
                    scored += session.send(row[start : start + 3])
                assert [e.position for e in scored] == list(range(len(row)))
                assert [e.event for e in scored] == row
                close_to([e.score for e in scored], list(expected.position_scores))
                close_to(list(scored[-1].scores), list(expected.scores))
                assert scored[-1].label == expected.label
                assert session.events_seen == len(row)
            cut = max(1, len(row) // 2)
            prefix = c.score_sequences("lstm", [row[:cut]], per_position=False).results[0]
            close_to(list(scored[cut - 1].scores), list(prefix.scores))


def test_resume_by_id_continues_the_state(
    sequence_server: RunningServer, model_repository: Path
) -> None:
    row = max(rows_of(model_repository), key=len)
    with client(sequence_server) as c:
        whole = c.stream("lstm")
        straight = whole.send(row)
        whole.close(end_session=True)
        first = c.stream("lstm")
        head = first.send(row[:10])
        session_id = first.session_id
        first.close()  # the call ends; the session stays
        second = c.resume_stream(session_id)
        assert second.session_id == session_id and second.events_seen == 10
        tail = second.send(row[10:])
        second.close(end_session=True)
        assert [e.position for e in tail] == list(range(10, len(row)))
        close_to([e.score for e in head + tail], [e.score for e in straight])
        close_to(list(tail[-1].scores), list(straight[-1].scores))
        with pytest.raises(NNServeError) as err:  # closed sessions are gone
            c.resume_stream(session_id)
        assert err.value.code == Code.NOT_FOUND


def test_failed_message_leaves_the_session_unchanged(sequence_server: RunningServer) -> None:
    """A message with a bad event ends the call with INVALID_ARGUMENT and applies none
    of its events; the session resumes where it was."""
    with client(sequence_server) as c:
        vocabulary = c.describe("lstm").vocabulary
        session = c.stream("lstm")
        session.send([vocabulary[2], vocabulary[3]])
        with pytest.raises(NNServeError) as err:
            session.send([vocabulary[4], "no.such.event"])
        assert err.value.code == Code.INVALID_ARGUMENT
        assert "no.such.event" in err.value.args[0]
        resumed = c.resume_stream(session.session_id)
        assert resumed.events_seen == 2
        assert resumed.send([vocabulary[4]])[0].position == 2
        resumed.close(end_session=True)


def test_bad_input_gets_clear_statuses(sequence_server: RunningServer) -> None:
    predictor = stub(sequence_server)
    vocab_size = len(client(sequence_server).describe("lstm").vocabulary)
    opened = npb.StreamRequest(model_name="lstm")
    cases = {
        "no model, no id": ([npb.StreamRequest()], Code.INVALID_ARGUMENT),
        "both": ([npb.StreamRequest(model_name="lstm", session_id="x")], Code.INVALID_ARGUMENT),
        "unknown id": ([npb.StreamRequest(session_id="nope")], Code.NOT_FOUND),
        "huge id": ([npb.StreamRequest(session_id="x" * 10_000)], Code.NOT_FOUND),
        "unknown model": ([npb.StreamRequest(model_name="nope")], Code.NOT_FOUND),
        "no step graph": ([npb.StreamRequest(model_name="transformer")], Code.INVALID_ARGUMENT),
        "id out of range": (
            [npb.StreamRequest(model_name="lstm", token_ids=npb.TokenIds(ids=[vocab_size]))],
            Code.INVALID_ARGUMENT,
        ),
        "negative id": (
            [npb.StreamRequest(model_name="lstm", token_ids=npb.TokenIds(ids=[-1]))],
            Code.INVALID_ARGUMENT,
        ),
        "too many events": (
            [npb.StreamRequest(model_name="lstm", token_ids=npb.TokenIds(ids=[2] * 257))],
            Code.INVALID_ARGUMENT,
        ),
    }
    open_before = read_metrics(sequence_server).total("nnserve_sessions_open", model="lstm")
    for what, (requests, code) in cases.items():
        error = call_error(lambda r=requests: stream_all(predictor, *r))  # type: ignore[misc]
        assert error.code() == code, what
        assert len(error.details() or "") < 300, what  # never echoes unbounded input
    # Sessions opened by calls that failed in their first message are not left behind.
    assert read_metrics(sequence_server).total("nnserve_sessions_open", model="lstm") == open_before
    error = call_error(lambda: stream_all(predictor, opened, opened))
    assert error.code() == Code.INVALID_ARGUMENT  # open or resume only in the first message


def test_a_session_is_used_by_one_call_at_a_time(sequence_server: RunningServer) -> None:
    with client(sequence_server) as c:
        session = c.stream("lstm")
        with pytest.raises(NNServeError) as err:
            c.resume_stream(session.session_id)
        assert err.value.code == Code.FAILED_PRECONDITION
        session.close(end_session=True)


def test_session_metrics(sequence_server: RunningServer) -> None:
    def stage_count() -> float:
        return read_metrics(sequence_server).total(
            "nnserve_request_stage_seconds_count", model="lstm"
        )

    stages_before = stage_count()
    events_before = read_metrics(sequence_server).total(
        "nnserve_session_events_total", model="lstm"
    )
    open_before = read_metrics(sequence_server).total("nnserve_sessions_open", model="lstm")
    with client(sequence_server) as c:
        vocabulary = c.describe("lstm").vocabulary
        session = c.stream("lstm")
        session.send(list(vocabulary[2:7]))
        assert (
            read_metrics(sequence_server).total("nnserve_sessions_open", model="lstm")
            == open_before + 1
        )
        session.close(end_session=True)
    assert read_metrics(sequence_server).total("nnserve_sessions_open", model="lstm") == open_before
    assert read_metrics(sequence_server).total("nnserve_session_events_total", model="lstm") == (
        events_before + 5
    )
    assert (
        read_metrics(sequence_server).total("nnserve_requests_total", method="Stream", code="OK")
        >= 2
    )
    # Stream messages run step batches, not the request batcher: no request stages.
    assert stage_count() == stages_before


# ---------------------------------------------------------------- TTL and bound


def test_ttl_expiry_and_the_session_bound(scratch_repository: Path) -> None:
    """max_sessions=2: a third session is RESOURCE_EXHAUSTED while two are held; a
    released session expires after the TTL (swept and counted), is NOT_FOUND on resume,
    and its slot is free again."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["lstm"],
        session_ttl_seconds=0.5, max_sessions=2,
    )  # fmt: skip
    with running_server(settings) as server, client(server) as c:
        token = c.describe("lstm").vocabulary[2]
        first, second = c.stream("lstm"), c.stream("lstm")
        first.send([token])
        time.sleep(0.8)  # attached sessions never expire, however long idle
        assert first.send([token])[0].position == 1
        with pytest.raises(NNServeError) as err:
            c.stream("lstm")
        assert err.value.code == Code.RESOURCE_EXHAUSTED
        assert "max_sessions" in err.value.args[0]
        session_id = first.session_id
        first.close()  # released: resumable for 0.5 s of idleness
        deadline = time.monotonic() + 10
        while read_metrics(server).total("nnserve_sessions_expired_total", model="lstm") < 1:
            assert time.monotonic() < deadline, "the sweep never dropped the idle session"
            time.sleep(0.05)
        assert read_metrics(server).total("nnserve_sessions_open", model="lstm") == 1
        with pytest.raises(NNServeError) as err:
            c.resume_stream(session_id)
        assert err.value.code == Code.NOT_FOUND
        third = c.stream("lstm")  # the expired session's slot
        assert third.send([token])[0].position == 0
        third.close(end_session=True)
        second.close(end_session=True)
        assert read_metrics(server).total("nnserve_sessions_expired_total", model="lstm") == 1


# ---------------------------------------------------------------- batching across sessions


def test_concurrent_streams_share_step_batches(scratch_repository: Path) -> None:
    """The only inference thread is held while eight streams each send an event, so the
    events queue; released, they run as shared step batches (one ORT call for seven),
    and every stream gets its own sequence's answer."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["lstm"], inference_threads=1
    )
    n = 8
    with running_server(settings) as server, client(server) as c:
        vocabulary = c.describe("lstm").vocabulary
        tokens = list(vocabulary[2 : 2 + n])
        expected = c.score_sequences("lstm", [[t] for t in tokens]).results
        sessions = [c.stream("lstm") for _ in range(n)]
        stepper = server.server.registry.resolve("lstm").stepper
        assert stepper is not None
        results: dict[int, float] = {}

        def send(i: int) -> None:
            results[i] = sessions[i].send([tokens[i]])[0].score

        with hold_inference_thread(server):
            senders = [threading.Thread(target=send, args=(i,)) for i in range(n)]
            for t in senders:
                t.start()
            deadline = time.monotonic() + 10
            while stepper.batcher.queue_depth < n - 1:  # one batch went to the held thread
                assert time.monotonic() < deadline, "events did not queue"
                time.sleep(0.01)
        for t in senders:
            t.join(10)
        for i in range(n):
            close_to([results[i]], list(expected[i].position_scores))
        for s in sessions:
            s.close(end_session=True)
        batches = read_metrics(server).total("nnserve_step_batch_size_count", model="lstm")
        rows = read_metrics(server).total("nnserve_step_batch_size_sum", model="lstm")
        assert rows - batches >= n - 2  # at least one batch ran n - 1 events at once
        big = batches - read_metrics(server).total(
            "nnserve_step_batch_size_bucket", model="lstm", le="4.0"
        )
        assert big >= 1  # a batch of more than 4 events


# ---------------------------------------------------------------- CLI --follow


def _scores_after(c: NNServeClient, history: list[str], candidates: list[str]) -> list[float]:
    """The full model's score of each candidate event appended to history."""
    result = c.score_sequences("lstm", [[*history, e] for e in candidates], per_position=True)
    return [r.position_scores[-1] for r in result.results]


def test_cli_follow_prints_an_appended_anomaly(
    sequence_server: RunningServer, tmp_path: Path
) -> None:
    """The threshold is put between the history's highest score and the score of the
    most suspicious next event (the model is trained briefly, so its scores are what
    they are); only that appended line is printed as an anomaly."""
    with client(sequence_server) as c:
        vocabulary = [t for t in c.describe("lstm").vocabulary[2:]]
        history = vocabulary[:6]
        history_scores = c.score_sequences("lstm", [history]).results[0].position_scores
        candidates = _scores_after(c, history, vocabulary)
        best = int(np.argmax(candidates))
        assert candidates[best] > max(history_scores), "no event scores above the history"
        threshold = (candidates[best] + max(history_scores)) / 2
    log = tmp_path / "app.log"
    log.write_text("".join(f"{e}\n" for e in history))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "nnserve_client", "--address", sequence_server.address,
            "logs", "lstm", "--follow", str(log), "--threshold", f"{threshold:.9g}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in process.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        header = lines.get(timeout=30)
        assert header.startswith(f"following {log} with lstm/1"), header
        time.sleep(1.0)  # the history is scored; nothing in it is above the threshold
        with log.open("a") as f:
            f.write(vocabulary[best] + "\n")
        printed = []
        while not printed or not printed[-1].startswith("anomaly"):
            printed.append(lines.get(timeout=20))  # verdict changes may come first
        expected = f"anomaly  event {len(history)}  {vocabulary[best]}  score"
        assert printed[-1].startswith(expected), printed
        assert sum(line.startswith("anomaly") for line in printed) == 1
        process.send_signal(signal.SIGINT)
        process.wait(20)
        reader.join(5)
        rest = []
        while not lines.empty():
            rest.append(lines.get())
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
        assert rest[-1].strip() == f"{len(history) + 1} events scored", rest
        assert not any(line.startswith("anomaly") for line in rest)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_cli_follow_stdin_ends_at_eof(sequence_server: RunningServer) -> None:
    with client(sequence_server) as c:
        described = c.describe("lstm")
    vocabulary = described.vocabulary
    unknown = vocabulary[described.model_json["sequence"]["unknown_id"]]
    events = [vocabulary[2], "never.seen.event", vocabulary[3]]
    done = subprocess.run(
        [
            sys.executable, "-m", "nnserve_client", "--address", sequence_server.address,
            "--json", "logs", "lstm", "--follow", "-", "--threshold", "0",
        ],
        input="".join(f"{e}\n" for e in events), capture_output=True, text=True, cwd=ROOT,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [p["position"] for p in printed] == [0, 1, 2]  # every score is above 0
    assert printed[1]["event"] == unknown  # sent as the model's unknown token
