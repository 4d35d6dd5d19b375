"""Matplotlib figures for runs/<name>/curves.png and the training report (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines or in CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_history(
    ax_loss: Axes, ax_metric: Axes, history: list[dict[str, float]], title: str, monitor: str
) -> None:
    epochs = [r["epoch"] for r in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    if history and "val_loss" in history[0]:
        ax_loss.plot(epochs, [r["val_loss"] for r in history], label="val loss")
    ax_loss.set_title(f"{title}: loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_metric.plot(epochs, [r[f"val_{monitor}"] for r in history], color="tab:green")
    ax_metric.set_title(f"{title}: validation {monitor}")
    ax_metric.set_xlabel("epoch")
    ax_metric.grid(alpha=0.3)


def curves(history: list[dict[str, float]], title: str, monitor: str, path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    plot_history(a, b, history, title, monitor)
    return _save(fig, path)


def all_curves(runs: dict[str, tuple[list[dict[str, float]], str]], path: Path) -> Path:
    """One row per model: loss and validation metric by epoch."""
    fig, axes = plt.subplots(len(runs), 2, figsize=(9, 2.6 * len(runs)), squeeze=False)
    for row, (name, (history, monitor)) in enumerate(runs.items()):
        plot_history(axes[row, 0], axes[row, 1], history, name, monitor)
    fig.tight_layout()
    return _save(fig, path)


def confusion(cm: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                color = "white" if cm[i, j] > top / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    return _save(fig, path)


def decision_regions(
    grids: list[tuple[str, np.ndarray]],
    xs: np.ndarray,
    ys: np.ndarray,
    points: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: tuple[str, str],
    path: Path,
) -> Path:
    """Side-by-side P(approved) maps over two features with held-out points on top."""
    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids), 4.4), squeeze=False)
    px, py, pc = points
    for ax, (title, z) in zip(axes[0], grids, strict=True):
        ax.contourf(xs, ys, z, levels=[-0.01, 0.5, 1.01], colors=["#f4c7c3", "#c6e5c4"])
        ax.contour(xs, ys, z, levels=[0.5], colors="black", linewidths=1)
        ax.scatter(px[pc == 0], py[pc == 0], s=6, c="tab:red", label="rejected", alpha=0.6)
        ax.scatter(px[pc == 1], py[pc == 1], s=6, c="tab:green", label="approved", alpha=0.6)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(title)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def by_length(
    buckets: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    title: str,
    ax: Axes,
    log: bool = False,
) -> None:
    for name, values in series.items():
        ax.plot(buckets, values, marker="o", label=name)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()


def accuracy_by_length(buckets: list[str], accuracy: dict[str, list[float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    by_length(buckets, accuracy, "sequence accuracy", "held-out accuracy by length", ax)
    fig.tight_layout()
    return _save(fig, path)


def _seed_dots(ax: Axes, x: float, values: list[float], color: str) -> None:
    offsets = np.linspace(-0.06, 0.06, len(values)) if len(values) > 1 else np.zeros(1)
    ax.scatter(x + offsets, values, s=14, color=color, edgecolor="black", linewidth=0.4, zorder=3)


def seed_quality(rows: list[tuple[str, str, float, list[float]]], path: Path) -> Path:
    """Per model: each seed's held-out metric (dots), their mean (bar) and the quality bar."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (_, _, bar, values) in enumerate(rows):
        # A short line for the mean, not a bar: the axis does not start at 0.
        ax.hlines(float(np.mean(values)), i - 0.25, i + 0.25, colors="black", linewidth=1.5)
        _seed_dots(ax, i, values, "tab:blue")
        ax.hlines(bar, i - 0.3, i + 0.3, colors="tab:red", linewidth=2, zorder=4)
        ax.text(i, bar, f"bar {bar:g}", color="tab:red", ha="center", va="top", fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{n}\n({m})" for n, m, _, _ in rows])
    low = min(min(min(v), b) for _, _, b, v in rows)
    ax.set_ylim(max(0.0, low - 0.02), 1.0)
    ax.set_ylabel("held-out metric")
    ax.set_title("every model on every seed: dots = seeds, black = mean, red = quality bar")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def grouped_seeds(
    groups: list[str],
    series: dict[str, list[list[float]]],
    ylabel: str,
    title: str,
    ax: Axes,
    bars: bool = True,
) -> None:
    """The seed mean per (group, series), seed values as dots on top.

    ``bars=False`` marks the mean with a short line instead of a bar, for an axis that
    does not start at 0 (a cut-off bar would misstate the ratio).
    """
    width = 0.8 / len(series)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, per_group) in enumerate(series.items()):
        for g, values in enumerate(per_group):
            x = g - 0.4 + width * (k + 0.5)
            mean = float(np.mean(values))
            label = name if g == 0 else "_nolegend_"  # one legend entry per series
            if bars:
                ax.bar(x, mean, width=width * 0.9, color=colors[k], alpha=0.45, label=label)
            else:
                ax.hlines(mean, x - width * 0.35, x + width * 0.35, colors=colors[k], label=label)
            _seed_dots(ax, x, values, colors[k])
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def spatial(test_sets: list[str], accuracy: dict[str, list[list[float]]], path: Path) -> Path:
    """CNN vs MLP accuracy on the held-out and the shifted digits."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    grouped_seeds(
        test_sets, accuracy, "accuracy (dots: seeds, line: mean)", "digits: CNN vs MLP", ax, False
    )
    low = min(min(min(v) for v in per) for per in accuracy.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    fig.tight_layout()
    return _save(fig, path)


def memory(
    gaps: list[int],
    accuracy: dict[str, list[list[float]]],
    chance: float,
    reach: float,
    path: Path,
) -> Path:
    """Held-out accuracy by gap: seed mean (line) and seeds (dots)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, per_gap) in enumerate(accuracy.items()):
        ax.plot(gaps, [float(np.mean(v)) for v in per_gap], marker="o", color=colors[k], label=name)
        for gap, values in zip(gaps, per_gap, strict=True):
            ax.scatter([gap] * len(values), values, s=12, color=colors[k], alpha=0.6)
    ax.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:g})")
    ax.axhline(reach, color="tab:red", linestyle="--", linewidth=1, label=f"reach ({reach:g})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(gaps, [str(g) for g in gaps])
    ax.set_xlabel("positions between the deciding event and the end (gap)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("remembering one event across a gap: LSTM vs RNN")
    ax.set_ylim(0.4, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def speed(
    epoch_cpu: dict[str, list[float]],
    step_lengths: list[int],
    step_ms: dict[str, list[float]],
    latency_lengths: list[int],
    latency: dict[str, dict[str, dict[str, list[float]]]],
    path: Path,
) -> Path:
    """CPU s per epoch, training step ms by length, and inference latency by length.

    ``latency``: panel title -> runtime -> model -> ms by length; one colour per model,
    one line style per runtime.
    """
    panels = 2 + len(latency)
    cols = 2
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.8 * rows), squeeze=False)
    flat = list(axes.ravel())
    grouped_seeds(
        ["per epoch"],
        {m: [v] for m, v in epoch_cpu.items()},
        "CPU seconds (dots: seeds)",
        "training time per epoch",
        flat[0],
    )
    by_length(
        [str(n) for n in step_lengths],
        step_ms,
        "ms per step (fastest run)",
        "training step, batch 64",
        flat[1],
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":"]
    for ax, (title, runtimes) in zip(flat[2:], latency.items(), strict=False):
        for r, (runtime, series) in enumerate(runtimes.items()):
            for m, (model, values) in enumerate(series.items()):
                ax.plot(
                    [str(n) for n in latency_lengths],
                    values,
                    marker="o",
                    color=colors[m],
                    linestyle=styles[r % len(styles)],
                    label=f"{model} ({runtime})",
                )
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms per batch (fastest run)")
        ax.set_title(f"inference, {title}")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)
