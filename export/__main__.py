"""python -m export --model NAME|all [--runs runs/] [--repository model_repository] [--if-missing]

Exports runs/<name>/checkpoint.pt as the next version of <name> in the repository,
behind the ONNX Runtime parity gate. Exit status 1 when any model fails (the others
are still attempted), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training import MODEL_NAMES

log = logging.getLogger("export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export trained checkpoints to ONNX + model.json behind a parity gate.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", choices=[*MODEL_NAMES, "all"])
    target.add_argument("--checkpoint", type=Path, help="export this checkpoint file")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="default: runs")
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="default: model_repository",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="only models with no version yet; train a missing checkpoint first",
    )
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser.parse_args(argv)


def _export_named(name: str, args: argparse.Namespace) -> str:
    from export.api import export_model, has_version
    from training.api import checkpoint_path

    if args.if_missing and has_version(args.repository, name):
        return f"{name:12s} skipped: {args.repository / name} already has a version"
    ckpt = checkpoint_path(args.runs, name)
    if not ckpt.exists():
        if not args.if_missing:
            raise FileNotFoundError(
                f"no checkpoint for {name!r} at {ckpt}; train it first "
                f"(python -m training --model {name}) or pass --if-missing"
            )
        from training.api import train

        log.info("%s: no checkpoint at %s, training it first", name, ckpt)
        train(name, runs_dir=args.runs, progress=False)
    result = export_model(ckpt, args.repository)
    return (
        f"{name:12s} version {result.version} -> {result.path} in {result.seconds:.1f}s; "
        f"parity ok: {result.summary()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    import torch

    from export.errors import ExportError
    from training.api import default_threads
    from training.checkpoint import CheckpointError

    torch.set_num_threads(default_threads())

    failures = 0
    jobs: list[tuple[str, str | None]]
    if args.checkpoint is not None:
        jobs = [("checkpoint", None)]
    else:
        names = list(MODEL_NAMES) if args.model == "all" else [args.model]
        jobs = [(n, n) for n in names]
    for label, name in jobs:
        try:
            if name is None:
                from export.api import export_model

                result = export_model(args.checkpoint, args.repository)
                print(
                    f"{result.name:12s} version {result.version} -> {result.path}; "
                    f"parity ok: {result.summary()}"
                )
            else:
                print(_export_named(name, args))
        except (ExportError, CheckpointError, FileNotFoundError, OSError) as exc:
            failures += 1
            print(f"error: {label}: {exc}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
