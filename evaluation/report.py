"""python -m evaluation.report [--out reports/training] [--work runs/report] [--seeds 7 8 9]

Trains everything it reports, from nothing, and writes report.md, summary.json and PNG
plots to --out: every model on each seed (mean and spread of the held-out metric
against its quality bar), then the measured claims of the families: perceptron vs MLP
on the banded loan rule, CNN vs an MLP of similar size on (shifted) digits, LSTM vs
plain RNN by how far back the deciding event lies, and Transformer vs LSTM training and
inference time by sequence length. The first seed's runs also give the training
curves, the digits confusion matrix and the perceptron/MLP decision regions.
Checkpoints go to --work. Progress goes to stderr; the report itself to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluation.claims import memory, seeds, spatial, speed
from training import MODEL_NAMES, plots
from training.api import default_threads
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data.loans import FEATURE_NAMES
from training.metrics import confusion_matrix
from training.models.perceptron import Perceptron, PerceptronConfig
from training.recipe import Dataset
from training.tasks import predict_logits, predict_sequences

log = logging.getLogger(__name__)

LENGTH_BUCKETS = [(1, 8), (9, 16), (17, 32), (33, 48), (49, 64)]


@dataclass(frozen=True)
class Plan:
    """What the report trains and times; the defaults are the published report."""

    seeds: tuple[int, ...] = seeds.SEEDS
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> config
    gaps: tuple[int, ...] = memory.GAPS
    gap_overrides: dict[str, Any] = field(default_factory=dict)  # GapConfig fields
    onnx: bool = True  # also time the exported graphs on ONNX Runtime
    latency_lengths: tuple[int, ...] = speed.LATENCY_LENGTHS
    latency_batches: tuple[int, ...] = speed.LATENCY_BATCHES
    step_lengths: tuple[int, ...] = speed.STEP_LENGTHS
    latency_repeats: int = 30
    step_repeats: int = 10
    progress: bool = True  # tqdm bars per training run

    def stages(self) -> int:
        n_seeds = len(self.seeds)
        timing = len(speed.MODELS) * (3 if self.onnx else 2)
        return len(MODEL_NAMES) * n_seeds + n_seeds + 2 * len(self.gaps) * n_seeds + timing


class Progress:
    """'[k/N] what (elapsed)' lines on stderr, one per training run or timing stage."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.done += 1
        minutes, seconds = divmod(int(time.perf_counter() - self.start), 60)
        print(f"[{self.done}/{self.total}] {what} ({minutes}:{seconds:02d})", file=sys.stderr)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def _load(path: Path) -> tuple[nn.Module, dict[str, Any], Dataset]:
    payload = load_checkpoint(path)
    model, config, recipe = model_from_checkpoint(payload)
    return model, payload, recipe.load_data(config)


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


@dataclass
class Findings:
    """Everything the markdown needs, gathered by :func:`write_report`."""

    command: str
    plan: Plan
    payloads: dict[str, dict[str, Any]]  # reference seed's checkpoints
    seed_rows: list[seeds.SeedRow]
    perceptron_on_banded: list[float]  # per seed
    cm: np.ndarray
    buckets: list[str]
    acc_by_len: dict[str, list[float]]
    spatial: spatial.SpatialResult
    memory: memory.MemoryResult
    speed: speed.SpeedResult
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end


def write_report(
    out_dir: str | Path = "reports/training",
    work_dir: str | Path = "runs/report",
    plan: Plan | None = None,
    command: str = "python -m evaluation.report",
) -> Path:
    plan = plan or Plan()
    out, work = Path(out_dir), Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(default_threads())
    progress = Progress(plan.stages())
    load_start = os.getloadavg()[0]

    results = seeds.run_seeds(
        MODEL_NAMES,
        plan.seeds,
        work,
        plan.overrides,
        progress=plan.progress,
        on_run=lambda name, seed: progress(f"training {name}, seed {seed}"),
    )
    rows = seeds.seed_rows(results)
    checkpoints = {
        name: {s: r.checkpoint for s, r in by_seed.items()} for name, by_seed in results.items()
    }
    ref = plan.seeds[0]
    loaded = {name: _load(checkpoints[name][ref]) for name in MODEL_NAMES}
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
        f"CNN on held-out digits, seed {ref} (accuracy {np.trace(cm) / cm.sum():.3f})",
        out / "digits_confusion.png",
    )
    mlp, mlp_payload, loans = loaded["mlp"]
    grids, xs, ys, points = decision_grids(mlp, mlp_payload, loans)
    plots.decision_regions(
        grids, xs, ys, points, ("age (years)", "debt_ratio"), out / "decision_regions.png"
    )
    acc_by_len = {n: accuracy_by_length(loaded[n][0], loaded[n][2]) for n in speed.MODELS}
    buckets = [f"{lo}-{hi}" for lo, hi in LENGTH_BUCKETS]
    plots.accuracy_by_length(buckets, acc_by_len, out / "sequence_accuracy_by_length.png")
    plots.seed_quality([(r.name, r.metric, r.bar, list(r.values)) for r in rows], out / "seeds.png")

    spatial_result = spatial.compare(
        checkpoints["cnn"],
        progress=plan.progress,
        on_run=lambda seed: progress(f"training the MLP on pixels, seed {seed}"),
    )
    plots.spatial(
        ["held-out", f"shifted {spatial_result.shift} px"],
        {
            f"{m} ({spatial_result.parameters[m]:,} parameters)": [
                spatial_result.accuracy[m][t] for t in spatial.TEST_SETS
            ]
            for m in spatial.MODELS
        },
        out / "cnn_vs_mlp.png",
    )

    memory_result = memory.compare(
        plan.gaps,
        plan.seeds,
        plan.gap_overrides,
        progress=plan.progress,
        on_run=lambda cell, gap, seed: progress(f"training the {cell}, gap {gap}, seed {seed}"),
    )
    plots.memory(
        list(plan.gaps),
        {c: [memory_result.accuracy[c][g] for g in plan.gaps] for c in memory.CELLS},
        memory.CHANCE,
        memory.REACH_ACCURACY,
        out / "lstm_vs_rnn.png",
    )

    speed_result = speed.compare(
        {n: checkpoints[n] for n in speed.MODELS},
        ref,
        onnx=plan.onnx,
        latency_lengths=plan.latency_lengths,
        batches=plan.latency_batches,
        step_lengths=plan.step_lengths,
        repeats=plan.latency_repeats,
        step_repeats=plan.step_repeats,
        on_stage=progress,
    )
    plots.speed(
        {m: speed_result.epoch[m]["cpu"] for m in speed.MODELS},
        list(plan.step_lengths),
        speed_result.step_ms,
        list(plan.latency_lengths),
        {
            f"batch {b}": {
                runtime: {m: by_batch[b][m] for m in speed.MODELS}
                for runtime, by_batch in _runtimes(speed_result)
            }
            for b in plan.latency_batches
        },
        out / "transformer_vs_lstm_time.png",
    )

    findings = Findings(
        command=command,
        plan=plan,
        payloads=payloads,
        seed_rows=rows,
        perceptron_on_banded=[
            float(results["mlp"][s].metrics["extra"]["perceptron_on_same_data_accuracy"])
            for s in plan.seeds
        ],
        cm=cm,
        buckets=buckets,
        acc_by_len=acc_by_len,
        spatial=spatial_result,
        memory=memory_result,
        speed=speed_result,
        seconds=progress.seconds,
        load=(load_start, os.getloadavg()[0]),
    )
    text = markdown(findings)
    report = out / "report.md"
    report.write_text(text)
    (out / "summary.json").write_text(json.dumps(summary(findings), indent=2) + "\n")
    # Drop plots an older version of the report wrote, so --out never holds stale figures.
    (out / "sequence_by_length.png").unlink(missing_ok=True)
    print(text)
    return report


def _runtimes(result: speed.SpeedResult) -> list[tuple[str, dict[int, dict[str, list[float]]]]]:
    names = {"pytorch": "PyTorch", "onnxruntime": "ORT"}
    return [(names[r], by_batch) for r, by_batch in result.latency.items()]


# ----------------------------------------------------------------- markdown


def _mean_sd(values: list[float]) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.4f} ± {sd:.4f}"


def _yes(held: bool) -> str:
    return "**yes**" if held else "**no**"


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _params(payload: dict[str, Any]) -> int:
    return sum(
        int(v.numel()) for k, v in payload["state_dict"].items() if not k.startswith("standardize")
    )


def markdown(f: Findings) -> str:
    ref = f.plan.seeds[0]
    lines = [
        "# nnserve training report",
        "",
        f"Generated by `{f.command}` in {f.seconds / 60:.1f} minutes on {os.cpu_count()} CPU "
        f"cores shared with other jobs (1-minute load average {f.load[0]:.1f} at the start, "
        f"{f.load[1]:.1f} at the end; torch threads: {default_threads()}). It trains everything",
        "below from nothing; all metrics are on held-out splits never used for training or",
        "early stopping. Times are from this run: other jobs on the same cores lengthen wall",
        "time most, and CPU time too (shared caches and cores), so compare times within one",
        "report, not across machines or runs.",
        "",
        *_held_out_section(f, ref),
        *_seed_section(f),
        *_perceptron_section(f),
        *_spatial_section(f),
        *_memory_section(f),
        *_sequence_section(f, ref),
        *_speed_section(f),
    ]
    return "\n".join(lines)


def _held_out_section(f: Findings, ref: int) -> list[str]:
    lines = [
        f"## Held-out results (seed {ref})",
        "",
        "| model | task data | accuracy | F1 | bar | passed | epochs | train s (wall) "
        "| train s (CPU) | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    total_wall = total_cpu = 0.0
    for name, p in f.payloads.items():
        m = p["metrics"]
        bar = m["quality_bar"]
        cpu = float(m["extra"].get("train_cpu_seconds", float("nan")))
        total_wall += m["train_seconds"]
        total_cpu += cpu
        lines.append(
            f"| {name} | {m['split']} | {m['accuracy']:.4f} | {m['f1']:.4f} | "
            f"{bar['metric']} >= {bar['min']} | {'yes' if bar['passed'] else '**no**'} | "
            f"{m['epochs_run']} (best {m['best_epoch']}) | {m['train_seconds']:.1f} | "
            f"{cpu:.1f} | {_params(p):,} |"
        )
    lines += [
        "",
        f"Training time of these five: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU.",
        "",
        "![training curves](training_curves.png)",
        "",
    ]
    return lines


def _seed_section(f: Findings) -> list[str]:
    seeds_ = f.plan.seeds
    all_pass = all(r.passed for r in f.seed_rows)
    lines = [
        f"## Quality across seeds ({', '.join(str(s) for s in seeds_)})",
        "",
        "Claim: every model clears its quality bar whatever the seed (a seed fixes the",
        "generated data or the digits split, the initial weights and the batch order).",
        "Spread is the sample standard deviation across seeds; margin is the worst seed",
        "minus the bar.",
        "",
        "| model | metric | bar | "
        + " | ".join(f"seed {s}" for s in seeds_)
        + " | mean | spread | margin | all seeds pass |",
        "|---|---|---|" + "---|" * len(seeds_) + "---|---|---|---|",
    ]
    for r in f.seed_rows:
        lines.append(
            f"| {r.name} | {r.metric} | {r.bar:g} | "
            + " | ".join(f"{v:.4f}" for v in r.values)
            + f" | {r.mean:.4f} | {r.spread:.4f} | {r.margin:+.4f} | "
            + ("yes" if r.passed else "**no**")
            + " |"
        )
    lines += [
        "",
        f"Held here: {_yes(all_pass)}"
        + (
            ", every model on every seed."
            if all_pass
            else f"; missed by: {', '.join(r.name for r in f.seed_rows if not r.passed)}."
        ),
        "",
        "![quality across seeds](seeds.png)",
        "",
    ]
    return lines


def _perceptron_section(f: Findings) -> list[str]:
    rows = {r.name: r for r in f.seed_rows}
    perc, mlp = f.perceptron_on_banded, list(rows["mlp"].values)
    held = all(m > p for m, p in zip(mlp, perc, strict=True))
    return [
        "## Perceptron vs MLP on the banded loan rule",
        "",
        "Claim: a perceptron cannot learn a rule that is not linearly separable; an MLP can.",
        "The MLP data approves an application only inside an age band (25-60), a debt-ratio",
        "band whose upper limit rises with income (an interaction), and above a credit-score",
        "floor, with 1% label noise. No hyperplane separates that region. On each seed a",
        "perceptron is trained on exactly the MLP's split.",
        "",
        "| model | data | " + " | ".join(f"seed {s}" for s in f.plan.seeds) + " | mean ± sd |",
        "|---|---|" + "---|" * len(f.plan.seeds) + "---|",
        "| perceptron | linear rule | "
        + " | ".join(f"{v:.4f}" for v in rows["perceptron"].values)
        + f" | {_mean_sd(list(rows['perceptron'].values))} |",
        "| perceptron | banded rule | "
        + " | ".join(f"{v:.4f}" for v in perc)
        + f" | {_mean_sd(perc)} |",
        "| mlp | banded rule | " + " | ".join(f"{v:.4f}" for v in mlp) + f" | {_mean_sd(mlp)} |",
        "",
        f"Held here: {_yes(held)}: on the banded rule the MLP beats the perceptron by "
        f"{min(m - p for m, p in zip(mlp, perc, strict=True)):.3f} to "
        f"{max(m - p for m, p in zip(mlp, perc, strict=True)):.3f} accuracy across seeds.",
        "",
        "![decision regions](decision_regions.png)",
        "",
        "Regions are each model's decision over age and debt ratio (seed "
        f"{f.plan.seeds[0]}) with the other six features held at their training medians;",
        "points are held-out applicants with incomes within 20% of the median and credit",
        "scores above the floor.",
        "",
    ]


def _spatial_section(f: Findings) -> list[str]:
    s = f.spatial
    lines = [
        "## CNN vs MLP on digits, as given and shifted",
        "",
        "Claim: a CNN keeps the spatial structure that an MLP on flattened pixels loses.",
        f"The MLP has two hidden layers of {s.widths[0]}, sized to the CNN's parameter count.",
        "Both are trained the same way on the same split (optimiser, epochs, early stopping,",
        f"and the CNN recipe's random shift of up to {s.shift} pixel), then scored on the",
        f"held-out digits and on every held-out digit shifted by {s.shift} pixel in each of",
        "the 8 directions.",
        "",
        "| model | parameters | test set | "
        + " | ".join(f"seed {seed}" for seed in s.seeds)
        + " | mean ± sd |",
        "|---|---|---|" + "---|" * len(s.seeds) + "---|",
    ]
    for m in spatial.MODELS:
        for t in spatial.TEST_SETS:
            values = s.accuracy[m][t]
            label = t if t == "held-out" else f"shifted {s.shift} px"
            lines.append(
                f"| {m} | {s.parameters[m]:,} | {label} | "
                + " | ".join(f"{v:.4f}" for v in values)
                + f" | {_mean_sd(values)} |"
            )
    gaps = {
        t: [c - m for c, m in zip(s.accuracy["cnn"][t], s.accuracy["mlp"][t], strict=True)]
        for t in spatial.TEST_SETS
    }
    lines += [
        "",
        f"Held here: {_yes(s.held)}: the CNN's lead over the MLP is "
        f"{min(gaps['held-out']):+.4f} to {max(gaps['held-out']):+.4f} on the held-out "
        f"digits and {min(gaps['shifted']):+.4f} to {max(gaps['shifted']):+.4f} on the "
        "shifted ones (across seeds; the claim needs a lead on every seed and both sets).",
        "",
        "![CNN vs MLP](cnn_vs_mlp.png)",
        "",
    ]
    return lines


def _memory_section(f: Findings) -> list[str]:
    r = f.memory
    config = memory.GapConfig(**f.plan.gap_overrides)
    lines = [
        "## LSTM vs plain RNN by gap",
        "",
        "Claim: an LSTM remembers across long gaps where a plain RNN forgets. Each log",
        "sequence holds one deciding event (`auth.token.validated`: label 0,",
        "`auth.token.rejected`: label 1) exactly `gap` events before its last event, after",
        "a random prefix of 0-7 events; every other event is drawn at random from the other",
        "normal events. Both models read the sequence in order and classify it from their",
        f"state at the last event (embedding {config.embed_dim}, hidden size "
        f"{config.hidden}, {config.n_samples} sequences per gap and seed, "
        f"{config.epochs} epochs, the best validation epoch kept). "
        + (
            "The LSTM's gate biases start from chrono initialisation (Tallec & Ollivier,"
            " 2018: memory time scales spread up to the sequence length); the RNN has no"
            " gates to initialise. "
            if config.chrono_init
            else ""
        )
        + f"Chance is {memory.CHANCE:g}. A model *reaches* a gap when every seed is at least"
        f" {memory.REACH_ACCURACY:g} accurate there and at every shorter gap.",
        "",
        "| model | parameters | seed | " + " | ".join(f"gap {g}" for g in r.gaps) + " |",
        "|---|---|---|" + "---|" * len(r.gaps),
    ]
    for cell in memory.CELLS:
        for k, seed in enumerate(r.seeds):
            lines.append(
                f"| {cell} | {r.parameters[cell]:,} | {seed} | "
                + " | ".join(f"{r.accuracy[cell][g][k]:.4f}" for g in r.gaps)
                + " |"
            )
        lines.append(
            f"| {cell} | | mean ± sd | "
            + " | ".join(_mean_sd(r.accuracy[cell][g]) for g in r.gaps)
            + " |"
        )
    reach = {c: r.reach(c) for c in memory.CELLS}
    lines += [
        "",
        f"Held here: {_yes(r.held)}: the LSTM reaches gap {reach['lstm'] or 'none'}, the "
        f"RNN gap {reach['rnn'] or 'none'}.",
        "",
        "![LSTM vs RNN by gap](lstm_vs_rnn.png)",
        "",
    ]
    return lines


def _sequence_section(f: Findings, ref: int) -> list[str]:
    seq = {n: f.payloads[n]["metrics"] for n in speed.MODELS}
    keys = ["accuracy", "f1"] + [
        k
        for k in seq["lstm"]["extra"]
        if k in ("precision", "recall", "position_f1") or k.startswith("recall_")
    ]
    lines = [
        f"## LSTM vs Transformer on the log sequences (seed {ref})",
        "",
        "| metric | lstm | transformer |",
        "|---|---|---|",
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
        "| length | " + " | ".join(f.buckets) + " |",
        "|---|" + "---|" * len(f.buckets),
    ]
    for name, accs in f.acc_by_len.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    lines += ["", "![accuracy by length](sequence_accuracy_by_length.png)", ""]
    return lines


def _speed_section(f: Findings) -> list[str]:
    s = f.speed
    params = {m: _params(f.payloads[m]) for m in speed.MODELS}
    cpu = {m: s.epoch_cpu(m) for m in speed.MODELS}
    growth = {m: s.step_ms[m][-1] / s.step_ms[m][0] for m in speed.MODELS}
    lines = [
        "## Transformer vs LSTM: training and inference time",
        "",
        "Claim: a Transformer relates every position to every other at once instead of",
        "stepping through the sequence, so it trains in parallel: it should need less time",
        "per epoch than the LSTM. Measured on this machine with one CPU thread (the training",
        "default), on the same log data.",
        "",
        "Training time per epoch (training pass + validation pass; mean ± sd over seeds):",
        "",
        "| model | parameters | CPU s per epoch | wall s per epoch |",
        "|---|---|---|---|",
    ]
    for m in speed.MODELS:
        lines.append(
            f"| {m} | {params[m]:,} | {_mean_sd(s.epoch[m]['cpu'])} | "
            f"{_mean_sd(s.epoch[m]['wall'])} |"
        )
    lines += [
        "",
        f"One training step (forward, backward, AdamW) at batch {speed.STEP_BATCH}, every "
        f"row the given length; fastest of {f.plan.step_repeats} runs, ms:",
        "",
        "| model | " + " | ".join(str(n) for n in s.step_lengths) + " |",
        "|---|" + "---|" * len(s.step_lengths),
    ]
    for m in speed.MODELS:
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in s.step_ms[m]) + " |")
    lines += [
        "",
        f"Inference latency, ms per batch (fastest of {f.plan.latency_repeats} runs) by sequence"
        " length, padded length = length, one thread; PyTorch eager"
        + (" and ONNX Runtime on the exported graph" if "onnxruntime" in s.latency else "")
        + ":",
        "",
    ]
    for batch in f.plan.latency_batches:
        lines += [
            f"batch {batch}:",
            "",
            "| model | " + " | ".join(str(n) for n in s.latency_lengths) + " |",
            "|---|" + "---|" * len(s.latency_lengths),
        ]
        for runtime, by_batch in _runtimes(s):
            for m in speed.MODELS:
                lines.append(
                    f"| {m} ({runtime}) | "
                    + " | ".join(f"{v:.3f}" for v in by_batch[batch][m])
                    + " |"
                )
        lines.append("")
    lines += [
        f"Held here: {_yes(s.held)}: the Transformer takes {cpu['transformer']:.2f} CPU s per "
        f"epoch against the LSTM's {cpu['lstm']:.2f} s. From length {s.step_lengths[0]} to "
        f"{s.step_lengths[-1]} a training step grows {growth['transformer']:.1f}x for the "
        f"Transformer and {growth['lstm']:.1f}x for the LSTM."
        + (
            ""
            if s.held
            else " With one CPU thread there is no parallel hardware for attention's"
            " all-at-once work to spread over, so what shows is its cost; the claim is about"
            " hardware that runs positions side by side (many cores, a GPU), which this"
            " report does not measure."
        ),
        "",
        "![Transformer vs LSTM time](transformer_vs_lstm_time.png)",
        "",
    ]
    return lines


def summary(f: Findings) -> dict[str, Any]:
    """The report's numbers as JSON (for tooling; report.md is for people)."""
    return {
        "seconds": round(f.seconds, 1),
        "seeds": list(f.plan.seeds),
        "reference_seed": {
            n: {k: p["metrics"][k] for k in ("accuracy", "f1", "train_seconds", "split")}
            | {"extra": p["metrics"]["extra"], "quality_bar": p["metrics"]["quality_bar"]}
            for n, p in f.payloads.items()
        },
        "quality_across_seeds": [
            {
                "model": r.name,
                "metric": r.metric,
                "bar": r.bar,
                "values": dict(zip((str(s) for s in r.seeds), r.values, strict=True)),
                "mean": r.mean,
                "spread": r.spread,
                "passed": r.passed,
            }
            for r in f.seed_rows
        ],
        "claims": {
            "perceptron_vs_mlp": {"perceptron_on_banded_rule": f.perceptron_on_banded},
            "cnn_vs_mlp": {
                "held": f.spatial.held,
                "parameters": f.spatial.parameters,
                "shift": f.spatial.shift,
                "seeds": f.spatial.seeds,
                "accuracy": f.spatial.accuracy,
            },
            "lstm_vs_rnn": {
                "held": f.memory.held,
                "parameters": f.memory.parameters,
                "seeds": list(f.memory.seeds),
                "accuracy": {
                    c: {str(g): v for g, v in by.items()} for c, by in f.memory.accuracy.items()
                },
                "reach": {c: f.memory.reach(c) for c in memory.CELLS},
            },
            "transformer_vs_lstm": {
                "held": f.speed.held,
                "epoch_seconds": f.speed.epoch,
                "step_ms": {"lengths": list(f.speed.step_lengths), **f.speed.step_ms},
                "latency_ms": {
                    "lengths": list(f.speed.latency_lengths),
                    **{
                        rt: {str(b): v for b, v in by.items()} for rt, by in f.speed.latency.items()
                    },
                },
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="reports/training", help="report folder")
    parser.add_argument("--work", default="runs/report", help="checkpoints of the report's runs")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(seeds.SEEDS),
        help="the first one also gives the curves and per-model details",
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime timings")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    plan = Plan(seeds=tuple(args.seeds), onnx=not args.no_onnx, progress=not args.no_progress)
    command = " ".join(
        ["python -m evaluation.report", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
    )
    report = write_report(args.out, args.work, plan, command=command)
    print(f"report: {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
