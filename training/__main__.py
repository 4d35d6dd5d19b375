"""python -m training --model NAME|all [--dry-run] [--runs runs/]"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from training import MODEL_NAMES

log = logging.getLogger("training")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--model", required=True, choices=[*MODEL_NAMES, "all"])
    parser.add_argument("--dry-run", action="store_true", help="one optimisation step each")
    parser.add_argument("--runs", default="runs", help="output folder (default: runs)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from training.api import train  # after logging setup; imports torch

    names = list(MODEL_NAMES) if args.model == "all" else [args.model]
    failed: list[str] = []
    start = time.perf_counter()
    for name in names:
        result = train(
            name, dry_run=args.dry_run, runs_dir=args.runs, progress=not args.no_progress
        )
        bar = result.metrics["quality_bar"]
        print(
            f"{name:12s} held-out accuracy={result.metrics['accuracy']:.4f} "
            f"f1={result.metrics['f1']:.4f} ({bar['metric']} bar {bar['min']}: "
            f"{'pass' if bar['passed'] else 'dry run' if args.dry_run else 'FAIL'}) "
            f"train {result.metrics['train_seconds']:.1f}s -> {result.checkpoint}"
        )
        if not args.dry_run and not bar["passed"]:
            failed.append(name)
    print(f"total {time.perf_counter() - start:.1f}s for {len(names)} model(s)")
    if args.model == "all" and not args.dry_run:
        print("report (trains its own runs on several seeds): python -m evaluation.report")
    if failed:
        print(f"error: quality bar missed by: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
