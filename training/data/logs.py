"""Simulated service logs: interleaved request/job life cycles with injected anomalies.

A "run" of the simulated service interleaves a handful of life cycles of different
kinds (an HTTP request with an optional cache miss and database round trip, a
background job, a user session, a payment, a health check, ...). Life cycles of the
same kind run one after the other (one worker per kind); different kinds interleave
freely. A run is *normal* when every kind's event stream is a sequence of complete
life cycles (checked by a regular-expression grammar per kind, see ``is_valid``).
Each grammar is 2-local: within a kind, whether an event may follow the previous
event of the same kind decides validity (plus how a kind's stream starts and ends),
so a detector has to relate each event to the last one of its own life cycle,
however many other events interleave in between.

Anomalies are injected into normal runs, one per anomalous run:

- ``missing``: a required step is dropped; the position flagged is the next event of
  the same kind (or the last position when the kind has no later event);
- ``reordered``: two consecutive steps of one life cycle swap places (both flagged);
- ``unexpected``: an error event, or a normal event out of context, is inserted;
- ``repeated``: a step is logged twice (the copy is flagged);
- ``truncated``: the run stops while a life cycle is still open (last position flagged).

Every injected run is re-checked by the grammar and re-drawn if it happens to still be
valid, so the sequence labels carry no noise.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD = "<pad>"
UNK = "<unk>"
SEQUENCE_LABELS = ["normal", "anomalous"]
ANOMALY_KINDS = ["missing", "reordered", "unexpected", "repeated", "truncated"]

# Life-cycle grammars, one per kind: a regular expression over event names (<name>).
_GRAMMARS: dict[str, str] = {
    "request": (
        "<http.request.received><auth.token.validated><rate_limit.checked>"
        "(?:<cache.lookup.hit>|<cache.lookup.miss><db.connection.acquired>"
        "<db.query.started><db.query.completed><db.connection.released>"
        "<cache.entry.stored>)<template.rendered>?<http.response.sent>"
    ),
    "job": (
        "<job.enqueued><job.dequeued><job.started><job.step.completed>+"
        "<storage.object.written>?<job.completed>"
    ),
    "session": (
        "<session.created><user.login.succeeded><session.refreshed>*<user.logout><session.closed>"
    ),
    "payment": (
        "<payment.authorization.requested><payment.gateway.called>"
        "<payment.gateway.responded><payment.authorization.approved><ledger.entry.written>"
    ),
    "health": "<scheduler.tick><healthcheck.started><healthcheck.passed>",
    "flush": "<metrics.flush.started><metrics.flush.completed>",
    "evict": "<cache.eviction.started><cache.eviction.completed>",
}
# Events that may appear anywhere, any number of times.
_FREE_EVENTS = ["gc.pause.recorded"]
# Events that never occur in a normal run.
ERROR_EVENTS = [
    "worker.crashed",
    "db.deadlock.detected",
    "http.response.timeout",
    "auth.token.rejected",
    "queue.overflowed",
    "disk.write.failed",
]
# How often each kind of life cycle starts (relative weights).
_KIND_WEIGHTS = {
    "request": 0.34,
    "job": 0.18,
    "session": 0.1,
    "payment": 0.1,
    "health": 0.1,
    "flush": 0.07,
    "evict": 0.06,
    "free": 0.05,
}


def _events_in(pattern: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"<([a-z_.]+)>", pattern)))


KIND_OF_EVENT: dict[str, str] = {e: k for k, p in _GRAMMARS.items() for e in _events_in(p)}
NORMAL_EVENTS: list[str] = [*KIND_OF_EVENT, *_FREE_EVENTS]
VOCABULARY: list[str] = [PAD, UNK, *NORMAL_EVENTS, *ERROR_EVENTS]
PAD_ID = 0
UNK_ID = 1
_TOKEN_ID = {e: i for i, e in enumerate(VOCABULARY)}
# One character per event, so a kind's event stream can be matched with `re`.
_CHAR = {e: chr(0x100 + i) for i, e in enumerate(VOCABULARY)}
_KIND_RE = {
    kind: re.compile(
        "(?:" + re.sub(r"<([a-z_.]+)>", lambda m: re.escape(_CHAR[m.group(1)]), pat) + ")*"
    )
    for kind, pat in _GRAMMARS.items()
}


def is_valid(events: list[str]) -> bool:
    """True when ``events`` is a normal run: every kind's stream is complete life cycles."""
    streams: dict[str, list[str]] = {k: [] for k in _GRAMMARS}
    for e in events:
        kind = KIND_OF_EVENT.get(e)
        if kind is not None:
            streams[kind].append(_CHAR[e])
        elif e not in _FREE_EVENTS:
            return False  # error or unknown event
    return all(_KIND_RE[k].fullmatch("".join(s)) for k, s in streams.items())


def _instance(kind: str, rng: random.Random) -> list[str]:
    """One complete life cycle of ``kind`` (must match its grammar)."""
    if kind == "request":
        body = (
            ["cache.lookup.hit"]
            if rng.random() < 0.45
            else [
                "cache.lookup.miss",
                "db.connection.acquired",
                "db.query.started",
                "db.query.completed",
                "db.connection.released",
                "cache.entry.stored",
            ]
        )
        rendered = ["template.rendered"] if rng.random() < 0.5 else []
        return [
            "http.request.received",
            "auth.token.validated",
            "rate_limit.checked",
            *body,
            *rendered,
            "http.response.sent",
        ]
    if kind == "job":
        steps = ["job.step.completed"] * rng.randint(1, 3)
        stored = ["storage.object.written"] if rng.random() < 0.5 else []
        return ["job.enqueued", "job.dequeued", "job.started", *steps, *stored, "job.completed"]
    if kind == "session":
        refresh = ["session.refreshed"] * rng.randint(0, 2)
        return [
            "session.created",
            "user.login.succeeded",
            *refresh,
            "user.logout",
            "session.closed",
        ]
    if kind == "free":
        return [rng.choice(_FREE_EVENTS)]
    return _events_in(_GRAMMARS[kind])


@dataclass
class _Event:
    name: str
    kind: str  # life-cycle kind, or "free"
    instance: int  # life-cycle id within the run


def _normal_run(rng: random.Random, target: int, concurrency: int) -> list[_Event]:
    """A run of at most ``target`` events with up to ``concurrency`` open life cycles.

    Whole life cycles are drawn until the next one would not fit; then a scheduler
    emits events: it starts the next waiting life cycle while fewer than
    ``concurrency`` are open (never two of the same kind), otherwise it advances a
    random open one.
    """
    kinds = list(_KIND_WEIGHTS)
    weights = [_KIND_WEIGHTS[k] for k in kinds]
    waiting: list[tuple[str, list[str]]] = []
    total, misses = 0, 0
    while misses < 6:
        kind = rng.choices(kinds, weights)[0]
        events = _instance(kind, rng)
        if total + len(events) > target:
            misses += 1
            continue
        waiting.append((kind, events))
        total += len(events)
    if not waiting:  # target too small for anything drawn: fall back to a 2-event cycle
        waiting.append(("flush", _events_in(_GRAMMARS["flush"])))
    run: list[_Event] = []
    open_: list[tuple[str, int, list[str]]] = []  # (kind, instance id, events left)
    next_id = 0
    while waiting or open_:
        busy = {k for k, _, _ in open_ if k != "free"}
        startable = [i for i, (k, _) in enumerate(waiting) if k not in busy]
        if startable and (not open_ or (len(open_) < concurrency and rng.random() < 0.35)):
            kind, events = waiting.pop(startable[0])
            open_.append((kind, next_id, list(events)))
            next_id += 1
        slot = rng.randrange(len(open_))
        kind, instance, left = open_[slot]
        run.append(_Event(left.pop(0), kind, instance))
        if not left:
            open_.pop(slot)
    return run


def _names(run: list[_Event]) -> list[str]:
    return [e.name for e in run]


def _inject_missing(run: list[_Event], rng: random.Random) -> tuple[list[str], list[int]]:
    i = rng.randrange(len(run))
    gone = run[i]
    rest = run[:i] + run[i + 1 :]
    if gone.kind == "free" or not rest:
        return [], []
    later = [j for j in range(i, len(rest)) if rest[j].kind == gone.kind]
    flagged = later[0] if later else len(rest) - 1
    return _names(rest), [flagged]


def _inject_reordered(run: list[_Event], rng: random.Random) -> tuple[list[str], list[int]]:
    i = rng.randrange(len(run))
    same = [j for j in range(i + 1, len(run)) if run[j].instance == run[i].instance]
    if run[i].kind == "free" or not same or run[same[0]].name == run[i].name:
        return [], []
    j = same[0]
    names = _names(run)
    names[i], names[j] = names[j], names[i]
    return names, [i, j]


def _inject_unexpected(run: list[_Event], rng: random.Random) -> tuple[list[str], list[int]]:
    pool = ERROR_EVENTS if rng.random() < 0.5 else list(KIND_OF_EVENT)
    event = rng.choice(pool)
    k = rng.randrange(len(run) + 1)
    names = _names(run)
    names.insert(k, event)
    return names, [k]


def _inject_repeated(run: list[_Event], rng: random.Random) -> tuple[list[str], list[int]]:
    i = rng.randrange(len(run))
    if run[i].kind == "free":
        return [], []
    k = min(i + 1 + rng.randrange(3), len(run))  # the copy lands 0-2 events later
    names = _names(run)
    names.insert(k, run[i].name)
    return names, [k]


def _inject_truncated(run: list[_Event], rng: random.Random) -> tuple[list[str], list[int]]:
    if len(run) < 2:
        return [], []
    cut = rng.randrange(1, len(run))
    return _names(run[:cut]), [cut - 1]


_INJECTORS: dict[str, Callable[[list[_Event], random.Random], tuple[list[str], list[int]]]]
_INJECTORS = {
    "missing": _inject_missing,
    "reordered": _inject_reordered,
    "unexpected": _inject_unexpected,
    "repeated": _inject_repeated,
    "truncated": _inject_truncated,
}


@dataclass(frozen=True)
class SequenceSplit:
    """Padded token ids (N, max_length), true lengths, sequence and position labels."""

    tokens: np.ndarray  # int64 (N, max_length), right-padded with PAD_ID
    lengths: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,): 0 normal, 1 anomalous
    position_labels: np.ndarray  # float32 (N, max_length): 1 at anomalous events, 0 at pads
    kinds: np.ndarray  # int64 (N,): 0 normal, 1 + index into ANOMALY_KINDS

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LogData:
    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit
    max_length: int
    seed: int
    anomaly_rate: float
    concurrency: int

    @property
    def split_description(self) -> str:
        n = len(self.train) + len(self.val) + len(self.test)
        return (
            f"held-out {len(self.test)} of {n} generated runs "
            f"({self.anomaly_rate:.0%} anomalous), seed {self.seed}"
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "labels": list(SEQUENCE_LABELS),
            "vocabulary": list(VOCABULARY),
            "pad_id": PAD_ID,
            "unknown_id": UNK_ID,
            "max_length": self.max_length,
            "anomaly_kinds": list(ANOMALY_KINDS),
            "split": self.split_description,
            "seed": self.seed,
            "anomaly_rate": self.anomaly_rate,
            "concurrency": self.concurrency,
        }


def _one_run(
    rng: random.Random, max_length: int, anomaly_rate: float, concurrency: int
) -> tuple[list[str], list[int], int]:
    """Returns (events, flagged positions, kind id) for one run."""
    if rng.random() >= anomaly_rate:
        run = _normal_run(rng, rng.randint(2, max_length), concurrency)
        return _names(run), [], 0
    kind = rng.randrange(len(ANOMALY_KINDS))
    inject = _INJECTORS[ANOMALY_KINDS[kind]]
    while True:
        # Room for one inserted event keeps every run within max_length.
        run = _normal_run(rng, rng.randint(2, max_length - 1), concurrency)
        names, flagged = inject(run, rng)
        if names and not is_valid(names):
            return names, flagged, kind + 1


def _encode(runs: list[tuple[list[str], list[int], int]], max_length: int) -> SequenceSplit:
    n = len(runs)
    tokens = np.full((n, max_length), PAD_ID, dtype=np.int64)
    position_labels = np.zeros((n, max_length), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    kinds = np.zeros(n, dtype=np.int64)
    for r, (names, flagged, kind) in enumerate(runs):
        tokens[r, : len(names)] = [_TOKEN_ID[e] for e in names]
        position_labels[r, flagged] = 1.0
        lengths[r] = len(names)
        kinds[r] = kind
    return SequenceSplit(tokens, lengths, (kinds > 0).astype(np.int64), position_labels, kinds)


def make_logs(
    n: int = 20000,
    seed: int = 7,
    max_length: int = 64,
    anomaly_rate: float = 0.4,
    concurrency: int = 2,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> LogData:
    """Generate ``n`` runs (lengths 1..max_length) and split them train/val/test."""
    if max_length < 4:
        raise ValueError("max_length must be at least 4")
    # Python's Random is much faster than numpy for this many tiny draws; str seeds hash
    # deterministically (sha512), independent of PYTHONHASHSEED.
    rng = random.Random(f"nnserve-logs-{seed}")
    runs = [_one_run(rng, max_length, anomaly_rate, concurrency) for _ in range(n)]
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    return LogData(
        train=_encode(runs[n_test + n_val :], max_length),
        val=_encode(runs[n_test : n_test + n_val], max_length),
        test=_encode(runs[:n_test], max_length),
        max_length=max_length,
        seed=seed,
        anomaly_rate=anomaly_rate,
        concurrency=concurrency,
    )


def decode(tokens: np.ndarray, length: int) -> list[str]:
    """Event names of one padded row."""
    return [VOCABULARY[int(t)] for t in tokens[:length]]
