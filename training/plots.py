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


def sequence_comparison(
    acc_buckets: list[str],
    accuracy: dict[str, list[float]],
    lat_lengths: list[str],
    latency: dict[str, dict[str, list[float]]],
    path: Path,
) -> Path:
    """Accuracy by length bucket, and latency (ms) by padded length for each batch size."""
    fig, axes = plt.subplots(1, 1 + len(latency), figsize=(5 * (1 + len(latency)), 3.8))
    by_length(acc_buckets, accuracy, "sequence accuracy", "held-out accuracy by length", axes[0])
    for ax, (batch, series) in zip(axes[1:], latency.items(), strict=True):
        by_length(lat_lengths, series, "ms per batch (median)", f"latency, {batch}", ax)
    fig.tight_layout()
    return _save(fig, path)
