"""Every model trained on several seeds: held-out metric per seed, mean and spread.

A seed fixes the generated data (or the digits split), the weight initialisation and
the batch order, so the spread across seeds is how much a result owes to luck.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.api import TrainResult, train

SEEDS = (7, 8, 9)  # the default seed (what `make train` ships) and the next two


@dataclass(frozen=True)
class SeedRow:
    """One model's held-out bar metric across seeds."""

    name: str
    metric: str
    bar: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]  # in ``seeds`` order

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        """Sample standard deviation across seeds (0 for a single seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def margin(self) -> float:
        """Worst seed minus the bar: negative when some seed missed it."""
        return self.low - self.bar

    @property
    def passed(self) -> bool:
        return all(v >= self.bar for v in self.values)


def run_seeds(
    names: tuple[str, ...],
    seeds: tuple[int, ...],
    work_dir: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    on_run: Callable[[str, int], None] | None = None,
) -> dict[str, dict[int, TrainResult]]:
    """Train every model on every seed into ``work_dir/seed-<seed>/<name>/``."""
    results: dict[str, dict[int, TrainResult]] = {name: {} for name in names}
    for seed in seeds:
        for name in names:
            if on_run is not None:
                on_run(name, seed)
            results[name][seed] = train(
                name,
                runs_dir=work_dir / f"seed-{seed}",
                overrides={**(overrides or {}).get(name, {}), "seed": seed},
                progress=progress,
                curves=False,  # the report draws the reference seed's curves itself
            )
    return results


def seed_rows(results: dict[str, dict[int, TrainResult]]) -> list[SeedRow]:
    rows = []
    for name, by_seed in results.items():
        bars = {
            (r.metrics["quality_bar"]["metric"], r.metrics["quality_bar"]["min"])
            for r in by_seed.values()
        }
        if len(bars) != 1:
            raise ValueError(f"{name}: the quality bar differs between seeds")
        ((metric, bar),) = bars
        seeds = tuple(by_seed)
        rows.append(
            SeedRow(
                name=name,
                metric=metric,
                bar=float(bar),
                seeds=seeds,
                values=tuple(float(by_seed[s].metrics["quality_bar"]["value"]) for s in seeds),
            )
        )
    return rows
