"""python -m training.report [--runs runs/] [--out reports/training] [--repository model_repository]

Reads the checkpoints in runs/ and writes report.md plus PNG plots: training curves,
the digits confusion matrix, perceptron-vs-MLP decision regions on two features, and
LSTM vs Transformer accuracy and latency by sequence length.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import MODEL_NAMES, plots
from training.api import CHECKPOINT, default_threads
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data.loans import FEATURE_NAMES
from training.metrics import confusion_matrix
from training.perceptron import Perceptron, PerceptronConfig
from training.recipe import Dataset
from training.tasks import predict_logits, predict_sequences

log = logging.getLogger(__name__)

LENGTH_BUCKETS = [(1, 8), (9, 16), (17, 32), (33, 48), (49, 64)]
LATENCY_LENGTHS = [1, 8, 16, 32, 48, 64]
LATENCY_BATCHES = [1, 32]


def _load(runs: Path, name: str) -> tuple[nn.Module, dict[str, Any], Dataset]:
    payload = load_checkpoint(runs / name / CHECKPOINT)
    model, config, recipe = model_from_checkpoint(payload)
    return model, payload, recipe.load_data(config)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _bind(fn: Callable[..., object], *args: object) -> Callable[[], object]:
    """fn with its arguments fixed now (a lambda in a loop would see the last ones)."""
    return lambda: fn(*args)


def _sequence_batch(
    vocab: int, batch: int, length: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, size=(batch, length)).astype(np.int64)
    return tokens, np.full(batch, length, dtype=np.int64)


def _latest_onnx(repository: Path | None, name: str) -> Path | None:
    if repository is None or not (repository / name).is_dir():
        return None
    versions = sorted(int(p.name) for p in (repository / name).iterdir() if p.name.isdigit())
    return repository / name / str(versions[-1]) / "model.onnx" if versions else None


def sequence_latency(
    model: nn.Module, vocab: int, onnx_path: Path | None, repeats: int
) -> dict[str, dict[int, list[float]]]:
    """Median ms per batch by length: PyTorch eager and (if exported) ONNX Runtime CPU."""
    out: dict[str, dict[int, list[float]]] = {"pytorch": {}, "onnxruntime": {}}
    session = None
    if onnx_path is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    for batch in LATENCY_BATCHES:
        out["pytorch"][batch], out["onnxruntime"][batch] = [], []
        for length in LATENCY_LENGTHS:
            tokens, lengths = _sequence_batch(vocab, batch, length, seed=length)
            t_tok, t_len = torch.from_numpy(tokens), torch.from_numpy(lengths)
            with torch.no_grad():
                out["pytorch"][batch].append(_median_ms(_bind(model, t_tok, t_len), repeats))
            if session is not None:
                feeds = {"tokens": tokens, "lengths": lengths}
                out["onnxruntime"][batch].append(
                    _median_ms(_bind(session.run, None, feeds), repeats)
                )
    return out


def accuracy_by_length(model: nn.Module, data: Dataset) -> list[float]:
    seq, _ = predict_sequences(model, data.test, 512)
    pred = seq.argmax(1)
    lengths, y = data.test["lengths"], data.test["y"]
    acc = []
    for lo, hi in LENGTH_BUCKETS:
        rows = (lengths >= lo) & (lengths <= hi)
        acc.append(float(np.mean(pred[rows] == y[rows])) if rows.any() else float("nan"))
    return acc


def decision_grids(
    mlp: nn.Module, payload: dict[str, Any], data: Dataset
) -> tuple[
    list[tuple[str, np.ndarray]], np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]
]:
    """P(approved) over (age, debt_ratio) with the other features at their medians."""
    features = payload["data"]["features"]
    baseline = Perceptron(PerceptronConfig(), payload["data"])
    baseline.load_state_dict(payload["artifacts"]["baseline_perceptron"]["state_dict"])
    baseline.eval()
    ix, iy = FEATURE_NAMES.index("age"), FEATURE_NAMES.index("debt_ratio")
    xs = np.linspace(features[ix]["min"], features[ix]["max"], 200)
    ys = np.linspace(0.0, 0.8, 200)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.tile(np.median(data.train["x"], axis=0), (gx.size, 1)).astype(np.float32)
    grid[:, ix], grid[:, iy] = gx.ravel(), gy.ravel()
    p_mlp = torch.softmax(torch.from_numpy(predict_logits(mlp, grid, 4096)), 1)[:, 1].numpy()
    p_perc = (predict_logits(baseline, grid, 4096)[:, 1] > 0).astype(np.float32)
    acc_p = payload["metrics"]["extra"]["perceptron_on_same_data_accuracy"]
    acc_m = payload["metrics"]["accuracy"]
    grids = [
        (f"perceptron (held-out accuracy {acc_p:.3f})", p_perc.reshape(gx.shape)),
        (f"MLP (held-out accuracy {acc_m:.3f})", p_mlp.reshape(gx.shape)),
    ]
    # Points comparable to the slice: incomes near the median, credit above the floor.
    x, y = data.test["x"], data.test["y"]
    income = x[:, FEATURE_NAMES.index("monthly_income")]
    med = np.median(data.train["x"][:, FEATURE_NAMES.index("monthly_income")])
    keep = (np.abs(income - med) < 0.2 * med) & (x[:, FEATURE_NAMES.index("credit_score")] >= 560)
    keep &= np.arange(len(y)) < 4000
    return grids, xs, ys, (x[keep, ix], x[keep, iy], y[keep])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_report(
    runs_dir: str | Path,
    out_dir: str | Path = "reports/training",
    repository: str | Path | None = "model_repository",
    repeats: int = 30,
) -> Path:
    runs, out = Path(runs_dir), Path(out_dir)
    repo = Path(repository) if repository else None
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(default_threads())
    loaded = {name: _load(runs, name) for name in MODEL_NAMES}
    payloads = {name: p for name, (_, p, _) in loaded.items()}

    plots.all_curves(
        {
            n: (p["history"], "f1" if p["task"] == "sequence" else "accuracy")
            for n, p in payloads.items()
        },
        out / "training_curves.png",
    )

    cnn, cnn_payload, digits = loaded["cnn"]
    pred = predict_logits(cnn, digits.test["x"], 512).argmax(1)
    cm = confusion_matrix(digits.test["y"], pred, 10)
    plots.confusion(
        cm,
        cnn_payload["data"]["labels"],
        f"CNN on held-out digits (accuracy {np.trace(cm) / cm.sum():.3f})",
        out / "digits_confusion.png",
    )

    mlp, mlp_payload, loans = loaded["mlp"]
    grids, xs, ys, points = decision_grids(mlp, mlp_payload, loans)
    plots.decision_regions(
        grids, xs, ys, points, ("age (years)", "debt_ratio"), out / "decision_regions.png"
    )

    acc_by_len: dict[str, list[float]] = {}
    latency: dict[str, dict[str, list[float]]] = {}
    ort_latency: dict[str, dict[int, list[float]]] = {}
    for name in ("lstm", "transformer"):
        model, payload, data = loaded[name]
        acc_by_len[name] = accuracy_by_length(model, data)
        lat = sequence_latency(
            model, len(payload["data"]["vocabulary"]), _latest_onnx(repo, name), repeats
        )
        for batch in LATENCY_BATCHES:
            latency.setdefault(f"batch {batch}", {})[f"{name} (PyTorch)"] = lat["pytorch"][batch]
            if lat["onnxruntime"][batch]:
                latency[f"batch {batch}"][f"{name} (ORT)"] = lat["onnxruntime"][batch]
        ort_latency[name] = lat["onnxruntime"]
    buckets = [f"{lo}-{hi}" for lo, hi in LENGTH_BUCKETS]
    plots.sequence_comparison(
        buckets,
        acc_by_len,
        [str(n) for n in LATENCY_LENGTHS],
        latency,
        out / "sequence_by_length.png",
    )

    report = out / "report.md"
    report.write_text(
        _markdown(payloads, cm, buckets, acc_by_len, latency, have_ort=bool(ort_latency["lstm"]))
    )
    (out / "summary.json").write_text(
        json.dumps(
            {
                n: {k: p["metrics"][k] for k in ("accuracy", "f1", "train_seconds", "split")}
                | {"extra": p["metrics"]["extra"], "quality_bar": p["metrics"]["quality_bar"]}
                for n, p in payloads.items()
            },
            indent=2,
        )
        + "\n"
    )
    return report


def _markdown(
    payloads: dict[str, dict[str, Any]],
    cm: np.ndarray,
    buckets: list[str],
    acc_by_len: dict[str, list[float]],
    latency: dict[str, dict[str, list[float]]],
    have_ort: bool,
) -> str:
    lines = [
        "# nnserve training report",
        "",
        "Generated by `python -m training.report` from the checkpoints in `runs/`.",
        "All metrics are on held-out splits never used for training or early stopping.",
        "",
        "## Held-out results",
        "",
        "| model | task data | accuracy | F1 | bar | passed | epochs | train s (wall) "
        "| train s (CPU) | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    total_wall = total_cpu = 0.0
    for name, p in payloads.items():
        m = p["metrics"]
        bar = m["quality_bar"]
        state = p["state_dict"]
        params = sum(int(v.numel()) for k, v in state.items() if not k.startswith("standardize"))
        cpu = float(m["extra"].get("train_cpu_seconds", float("nan")))
        total_wall += m["train_seconds"]
        total_cpu += cpu
        lines.append(
            f"| {name} | {m['split']} | {m['accuracy']:.4f} | {m['f1']:.4f} | "
            f"{bar['metric']} >= {bar['min']} | {'yes' if bar['passed'] else '**no**'} | "
            f"{m['epochs_run']} (best {m['best_epoch']}) | {m['train_seconds']:.1f} | "
            f"{cpu:.1f} | {params:,} |"
        )
    lines += [
        "",
        f"Total training time: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU "
        f"(torch threads: {payloads['mlp']['metrics']['extra'].get('torch_threads', '?')}). "
        "Wall time depends on what else the machine runs; CPU time is the comparable number.",
        "",
        "## Perceptron vs MLP on the banded loan rule",
        "",
        "The MLP data approves an application only inside an age band (25-60), a debt-ratio",
        "band whose upper limit rises with income (an interaction), and above a credit-score",
        "floor, with 1% label noise. No hyperplane separates that region.",
        "",
        "- perceptron on the linear rule: accuracy "
        f"{payloads['perceptron']['metrics']['accuracy']:.4f}",
        "- perceptron trained on the MLP's (banded) data: accuracy "
        f"{payloads['mlp']['metrics']['extra']['perceptron_on_same_data_accuracy']:.4f}",
        f"- MLP on the same data: accuracy {payloads['mlp']['metrics']['accuracy']:.4f}",
        "",
        "![decision regions](decision_regions.png)",
        "",
        "Regions are each model's decision over age and debt ratio with the other six",
        "features held at their training medians; points are held-out applicants with",
        "incomes within 20% of the median and credit scores above the floor.",
        "",
        "## Training curves",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Digits (CNN)",
        "",
        f"Held-out accuracy {np.trace(cm) / cm.sum():.4f} on {int(cm.sum())} images.",
        "",
        "![digits confusion matrix](digits_confusion.png)",
        "",
        "## LSTM vs Transformer on the log sequences",
        "",
        "| metric | lstm | transformer |",
        "|---|---|---|",
    ]
    seq = {n: payloads[n]["metrics"] for n in ("lstm", "transformer")}
    keys = ["accuracy", "f1"] + [
        k
        for k in seq["lstm"]["extra"]
        if k in ("precision", "recall", "position_f1") or k.startswith("recall_")
    ]
    for key in keys:
        vals = [seq[n][key] if key in seq[n] else seq[n]["extra"].get(key) for n in seq]
        lines.append(f"| {key} | {_fmt(vals[0])} | {_fmt(vals[1])} |")
    lines += [
        "",
        "`recall_<kind>` is the share of held-out runs with that injected anomaly that were",
        "flagged; `position_f1` scores the per-event anomaly flags (threshold 0.5).",
        "",
        "Held-out sequence accuracy by length:",
        "",
        "| length | " + " | ".join(buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for name, accs in acc_by_len.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    load = os.getloadavg()[0]
    lines += [
        "",
        "Median latency per batch (ms, one CPU thread, padded length = sequence length"
        + (", PyTorch eager and ONNX Runtime on the exported graph" if have_ort else "")
        + f"; 1-minute load average {load:.1f} on {os.cpu_count()} cores when timed):",
        "",
    ]
    for batch, series in latency.items():
        lines += [
            f"{batch}:",
            "",
            "| model | " + " | ".join(str(n) for n in LATENCY_LENGTHS) + " |",
            "|---|" + "---|" * len(LATENCY_LENGTHS),
        ]
        for name, values in series.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
        lines.append("")
    lines += ["![sequence models by length](sequence_by_length.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.report", description=__doc__)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out", default="reports/training")
    parser.add_argument(
        "--repository",
        default="model_repository",
        help="also time the exported ONNX graphs found here ('' to skip)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    print(write_report(args.runs, args.out, args.repository or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
