"""Command line for nnserve's domain API and health checks.

    python -m nnserve_client health [--model mlp]
    python -m nnserve_client describe mlp                 (with its shadow comparison, if any)
    python -m nnserve_client shadow mlp 2                 (admin: version 2 shadows mlp)
    python -m nnserve_client shadow mlp --promote         (admin: the shadow serves; --off: none)
    python -m nnserve_client loan mlp --feature age=35 --feature income=4200 ...
    python -m nnserve_client loan mlp --file applicants.json
    python -m nnserve_client digit cnn --image seven.npy   (.npy, .csv/.txt, .pgm, .png)
    python -m nnserve_client digit cnn --sample 7          (scikit-learn's digits)
    python -m nnserve_client logs lstm --events "http.request.received,auth.token.validated"
    python -m nnserve_client logs lstm --file events.txt   (one event per line)
    python -m nnserve_client logs lstm --follow app.log    (or - for stdin: a streaming
        session scores each line as it is appended and prints the anomalous ones)
    python -m nnserve_client logs transformer --events "..." --explain   (why flagged)

--address HOST:PORT (default $NNSERVE_ADDRESS, else 127.0.0.1:50051, or :50052 for
`logs`), --timeout SECONDS and --json (machine-readable output) go before or after
the command. Exit status: 0 success (health: SERVING), 1 the call failed or the
service is not SERVING, 2 bad usage or input.

Security: --tls (system roots) or --ca ca.pem turn TLS on; --cert/--key add a client
certificate (mutual TLS); --server-name NAME checks NAME in the server certificate.
The bearer token comes from $NNSERVE_TOKEN (kept out of shell history) or --token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nnserve_client import (
    DEFAULT_TIMEOUT_S,
    ClassifyResult,
    ExplainOptions,
    ModelDescription,
    NNServeClient,
    NNServeError,
    SequenceResult,
    SequenceScores,
    ServingStatus,
    StreamEventScore,
)
from nnserve_client.inputs import (
    InputError,
    parse_events,
    parse_features,
    read_feature_file,
    read_image,
    sample_digit,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CLASSIFY_ADDRESS, SEQUENCE_ADDRESS = "127.0.0.1:50051", "127.0.0.1:50052"


def _common_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # On sub-commands the defaults are suppressed so that a value given before the
    # command is not overwritten by the sub-command's default.
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    parser.add_argument(
        "--address", default=default(None), help="server HOST:PORT (see the defaults above)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print machine-readable JSON instead of tables",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect with TLS (implied by --ca/--cert)",
    )
    parser.add_argument(
        "--ca", type=Path, default=default(None), help="PEM CA certificates to trust"
    )
    parser.add_argument(
        "--cert", type=Path, default=default(None), help="PEM client certificate (mutual TLS)"
    )
    parser.add_argument("--key", type=Path, default=default(None), help="PEM client key")
    parser.add_argument(
        "--server-name",
        default=default(None),
        help="name to verify in the server certificate (default: the address host)",
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help="bearer token (default $NNSERVE_TOKEN; prefer the variable: no shell history)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnserve_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common_options(sub, top_level=False)
        return sub

    health = command("health", "grpc.health.v1 check; exit 0 if SERVING, else 1")
    health.add_argument("--model", default="", help="check one model instead of the server")

    describe = command("describe", "show a model's task, labels, features or vocabulary")
    describe.add_argument("model")
    describe.add_argument("--version", default="", help="model version (default: highest ready)")

    shadow = command(
        "shadow", "admin: set or remove a model's shadow version, or promote it to serving"
    )
    shadow.add_argument("model")
    action = shadow.add_mutually_exclusive_group(required=True)
    action.add_argument("version", nargs="?", help="the ready version to shadow the serving one")
    action.add_argument("--off", action="store_true", help="remove the shadow version")
    action.add_argument(
        "--promote", action="store_true", help="the shadow version serves from now on"
    )

    loan = command("loan", "classify loan applications with a tabular model (perceptron, mlp)")
    loan.add_argument("model")
    source = loan.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--feature",
        action="append",
        metavar="NAME=VALUE",
        help="one named feature; repeat for every feature the model has",
    )
    source.add_argument(
        "--file", type=Path, help="JSON file: an object of features or a list of them"
    )
    loan.add_argument("--top-k", type=int, default=2)
    loan.add_argument("--version", default="")

    digit = command("digit", "classify a handwritten digit image with an image model (cnn)")
    digit.add_argument("model")
    source = digit.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--image",
        type=Path,
        help=".npy array, CSV/text of numbers (64 -> 8x8), or 8-bit PGM/PNG",
    )
    source.add_argument(
        "--sample", type=int, metavar="N", help="image N of scikit-learn's digits data set"
    )
    digit.add_argument("--top-k", type=int, default=3)
    digit.add_argument("--version", default="")

    logs = command("logs", "score a sequence of log events with a sequence model (lstm, ...)")
    logs.add_argument("model")
    source = logs.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="comma-separated event names (or token ids)")
    source.add_argument("--file", type=Path, help="file with one event per line")
    source.add_argument(
        "--follow",
        metavar="FILE",
        help="score FILE's lines (one event per line) as they are appended, in a streaming "
        "session; - reads stdin until EOF. Prints each anomalous event; stop with Ctrl-C",
    )
    logs.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="mark positions whose anomaly score is above this (default 0.5)",
    )
    logs.add_argument(
        "--explain",
        action="store_true",
        help="for each flagged event, show the earlier events it attended to most "
        "(models with an explain graph, e.g. transformer)",
    )
    logs.add_argument(
        "--top-k", type=int, default=3, help="attended events shown per flagged event (1..16)"
    )
    logs.add_argument("--version", default="")
    return parser


# ---------------------------------------------------------------- rendering


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _model_line(model: str, version: str) -> str:
    return f"model: {model}" + (f" (version {version})" if version else "")


def _print_classify(result: ClassifyResult) -> None:
    print(_model_line(result.model, result.version))
    for i, c in enumerate(result.results):
        if len(result.results) > 1:
            print(f"\n[{i}]")
        score = c.scores[c.index] if 0 <= c.index < len(c.scores) else float("nan")
        print(f"prediction: {c.label} ({score:.4f})")
        width = max([5, *(len(s.label) for s in c.top_k)])
        print(f"  {'rank':>4}  {'label':<{width}}  score")
        for rank, s in enumerate(c.top_k, start=1):
            print(f"  {rank:>4}  {s.label:<{width}}  {s.score:.4f}")
        print(
            "scores: "
            + " ".join(f"{lab}={v:.4f}" for lab, v in zip(result.labels, c.scores, strict=False))
        )


def _print_sequences(result: SequenceResult, threshold: float) -> None:
    print(_model_line(result.model, result.version))
    for i, s in enumerate(result.results):
        if len(result.results) > 1:
            print(f"\n[{i}]")
        score = s.scores[s.index] if 0 <= s.index < len(s.scores) else float("nan")
        scores = " ".join(f"{lab}={v:.4f}" for lab, v in zip(result.labels, s.scores, strict=False))
        print(f"sequence: {s.label} ({score:.4f})   {scores}")
        if not s.position_scores:
            print(f"{s.length} events; the model gives no per-position scores")
            continue
        names = [str(e) for e in s.steps] or [""] * len(s.position_scores)
        width = max([5, *(len(n) for n in names)])
        print(f"  {'pos':>3}  {'event':<{width}}  score")
        flagged = 0
        for pos, (name, p) in enumerate(zip(names, s.position_scores, strict=False)):
            mark = "  <- anomalous" if p > threshold else ""
            flagged += p > threshold
            print(f"  {pos:>3}  {name:<{width}}  {p:.4f}{mark}")
        print(f"{s.length} events, {flagged} flagged (score > {threshold:g})")
        _print_explanations(s)


def _print_explanations(s: SequenceScores) -> None:
    for e in s.explanations:
        print(f"\nevent {e.position} {e.token} ({e.score:.4f}) attended most to:")
        for a in e.attended:
            print(f"  {a.position:>3}  {a.token:<32}  {a.weight:.3f}")


def _print_description(d: ModelDescription) -> None:
    rows = [
        ("model", d.name),
        ("version", d.version),
        ("family", d.family),
        ("task", d.task),
        ("ready", "yes" if d.ready else "no"),
        ("provider", d.provider),
        ("labels", ", ".join(d.labels)),
    ]
    if d.feature_names:
        rows.append(("features", ", ".join(d.feature_names)))
    if d.vocabulary:
        rows.append(("vocabulary", f"{len(d.vocabulary)} events: " + ", ".join(d.vocabulary)))
    if d.max_length:
        rows.append(("max length", str(d.max_length)))
    metrics = d.model_json.get("metrics", {})
    for key in ("accuracy", "f1"):
        if key in metrics:
            rows.append((key, f"{metrics[key]}"))
    if d.shadow is not None:
        s = d.shadow
        rows.append(("shadow", f"version {s.shadow_version} shadows version {s.serving_version}"))
        rows.append((
            "agreement",
            f"{s.agreement:.4f} over the last {s.window_rows} rows "
            f"({s.compared_rows} compared, {s.dropped_requests} requests dropped)",
        ))  # fmt: skip
        rows.append((
            "difference",
            f"max {s.max_abs_difference:.3g}, p99 {s.p99_abs_difference:.3g} (scores)",
        ))  # fmt: skip
    for key, value in rows:
        print(f"{key + ':':<12}{value}")


# ---------------------------------------------------------------- commands


def _health(client: NNServeClient, opts: argparse.Namespace) -> int:
    status = client.health(opts.model)
    if opts.json:
        _emit_json({"service": opts.model, "status": status.value})
    else:
        print(status.value)
    return EXIT_OK if status is ServingStatus.SERVING else EXIT_FAILED


def _describe(client: NNServeClient, opts: argparse.Namespace) -> int:
    description = client.describe(opts.model, version=opts.version)
    if opts.json:
        _emit_json(dataclasses.asdict(description))
    else:
        _print_description(description)
    return EXIT_OK


def _shadow(client: NNServeClient, opts: argparse.Namespace) -> int:
    if opts.promote:
        route = client.promote_shadow(opts.model)
    else:
        route = client.set_shadow(opts.model, "" if opts.off else opts.version)
    if opts.json:
        _emit_json(dataclasses.asdict(route))
    else:
        pinned = " (pinned)" if route.pinned else ""
        print(f"model {route.model}: version {route.serving_version or '-'} serves{pinned}, "
              f"shadow: {route.shadow_version or 'none'}")  # fmt: skip
    return EXIT_OK


def _loan(client: NNServeClient, opts: argparse.Namespace) -> int:
    rows = read_feature_file(opts.file) if opts.file else [parse_features(opts.feature)]
    result = client.classify_tabular(opts.model, rows, top_k=opts.top_k, version=opts.version)
    if opts.json:
        _emit_json(dataclasses.asdict(result))
    else:
        _print_classify(result)
    return EXIT_OK


def _digit(client: NNServeClient, opts: argparse.Namespace) -> int:
    true_label: int | None = None
    if opts.sample is not None:
        image, true_label = sample_digit(opts.sample)
    else:
        image = read_image(opts.image)
    result = client.classify_images(opts.model, image, top_k=opts.top_k, version=opts.version)
    if opts.json:
        _emit_json({**dataclasses.asdict(result), "true_label": true_label})
        return EXIT_OK
    if true_label is not None:
        print(f"sample {opts.sample}: true label {true_label}")
    _print_classify(result)
    return EXIT_OK


def _logs(client: NNServeClient, opts: argparse.Namespace) -> int:
    if opts.follow is not None:
        if opts.explain:  # a streaming session runs the step graph, which has no attention
            raise InputError("--explain works with --events or --file, not --follow")
        return _follow(client, opts)
    if opts.file is not None:
        try:
            text = opts.file.read_text()
        except OSError as err:
            raise InputError(f"{opts.file}: {err.strerror}") from None
    else:
        text = opts.events
    events = parse_events(text)
    explain = None
    if opts.explain:
        if not 1 <= opts.top_k <= 16:
            raise InputError("--top-k must be 1..16")
        if not 0.0 < opts.threshold <= 1.0:
            raise InputError("--explain needs a --threshold in (0, 1]")
        explain = ExplainOptions(top_k=opts.top_k, threshold=opts.threshold)
    result = client.score_sequences(
        opts.model, [events], per_position=True, version=opts.version, explain=explain
    )
    if opts.json:
        data = dataclasses.asdict(result)
        for r in data["results"]:
            r["flagged"] = [i for i, p in enumerate(r["position_scores"]) if p > opts.threshold]
        _emit_json({**data, "threshold": opts.threshold})
    else:
        _print_sequences(result, opts.threshold)
    return EXIT_OK


# Events per Stream message (the server's default max_stream_events is 256).
FOLLOW_CHUNK = 64
FOLLOW_POLL_S = 0.2
# A quiet file still sends an empty message this often: the server ends a Stream call
# that sends nothing for its session_idle_seconds (default 300).
FOLLOW_KEEPALIVE_S = 60.0


def _appended_lines(source: str, stop: threading.Event) -> Iterator[list[str]]:
    """Complete lines as they arrive: stdin until EOF, or a file from its start and then
    whatever is appended (like tail -f; a truncated file is read again from the start).
    A file that stays quiet yields an empty list every FOLLOW_KEEPALIVE_S."""
    if source == "-":
        while line := sys.stdin.readline():
            yield [line]
        return
    try:
        f = open(source, encoding="utf-8", errors="replace")  # noqa: SIM115 - held while following
    except OSError as err:
        raise InputError(f"{source}: {err.strerror}") from None
    with f:
        partial = ""
        quiet_since = time.monotonic()
        while True:
            chunk = f.read()
            if chunk:
                text = partial + chunk
                lines = text.split("\n")
                partial = lines.pop()  # a line still being written
                if lines:
                    quiet_since = time.monotonic()
                    yield lines
                continue
            if time.monotonic() - quiet_since >= FOLLOW_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield []
            try:
                if os.stat(source).st_size < f.tell():
                    f.seek(0)
                    partial = ""
            except OSError:
                pass  # rotated away: keep waiting for the name to come back
            if stop.wait(FOLLOW_POLL_S):  # Ctrl-C: end between polls, never mid-call
                return


def _print_anomaly(e: StreamEventScore, labels: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        # One object per line (JSON Lines), printed as it happens.
        record = dataclasses.asdict(e) | {"labels": list(labels)}
        print(json.dumps(record), flush=True)
    else:
        best = max(e.scores) if e.scores else float("nan")
        print(
            f"anomaly  event {e.position}  {e.event}  score {e.score:.4f}   "
            f"sequence: {e.label} ({best:.4f})",
            flush=True,
        )


def _follow(client: NNServeClient, opts: argparse.Namespace) -> int:
    """Stream FILE (or stdin) into a session; print anomalous events as they happen."""
    described = client.describe(opts.model, version=opts.version)
    vocabulary = set(described.vocabulary)
    unknown_id = (described.model_json.get("sequence") or {}).get("unknown_id")
    unknown = described.vocabulary[unknown_id] if isinstance(unknown_id, int) else None
    session = client.stream(opts.model, version=opts.version)
    stop = threading.Event()

    def on_interrupt(_signum: int, _frame: object) -> None:
        stop.set()
        if opts.follow == "-":  # a blocking read of stdin only ends with an exception
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    if not opts.json:
        print(
            f"following {opts.follow} with {session.model}/{session.version} "
            f"(session {session.session_id}); events scoring above {opts.threshold:g}:",
            flush=True,
        )
    verdict = ""
    try:
        for lines in _appended_lines(opts.follow, stop):
            events = [ln.strip() for ln in lines]
            events = [e for e in events if e and not e.startswith("#")]
            # An event the model never saw is sent as its unknown token, when it has one.
            events = [e if e in vocabulary or unknown is None else unknown for e in events]
            if not lines:
                session.send([])  # keeps the quiet session's call attached
            for start in range(0, len(events), FOLLOW_CHUNK):
                for scored in session.send(events[start : start + FOLLOW_CHUNK]):
                    if scored.score > opts.threshold:
                        _print_anomaly(scored, session.labels, opts.json)
                    if scored.label != verdict and not opts.json:
                        if verdict:
                            print(
                                f"sequence verdict: {scored.label} from event {scored.position}",
                                flush=True,
                            )
                        verdict = scored.label
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
        session.close(end_session=True)
    if not opts.json:
        print(f"{session.events_seen} events scored", flush=True)
    return EXIT_OK


COMMANDS = {
    "health": _health,
    "describe": _describe,
    "shadow": _shadow,
    "loan": _loan,
    "digit": _digit,
    "logs": _logs,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Piped into head/less: end quietly like other command-line tools, no traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    opts = build_parser().parse_args(argv)
    default = SEQUENCE_ADDRESS if opts.command == "logs" else CLASSIFY_ADDRESS
    address = opts.address or os.environ.get("NNSERVE_ADDRESS") or default
    token = opts.token or os.environ.get("NNSERVE_TOKEN") or None
    try:
        client = NNServeClient(
            address,
            timeout=opts.timeout,
            tls=opts.tls,
            ca=opts.ca,
            cert=opts.cert,
            key=opts.key,
            server_name=opts.server_name,
            token=token,
        )
    except (OSError, ValueError) as err:
        print(f"error: TLS files: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return COMMANDS[opts.command](client, opts)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NNServeError as err:
        print(f"error: {address}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
