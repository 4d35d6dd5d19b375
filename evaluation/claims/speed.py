"""Transformer vs LSTM: training time per epoch and per step, inference latency by length.

Claim: a Transformer relates every position to every other at once instead of stepping
through the sequence, so it trains in parallel. What that buys depends on the hardware:
the numbers here are from this machine, on one CPU thread (the training default, see
:func:`training.api.default_threads`).
"""

from __future__ import annotations

import copy
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint

MODELS = ("lstm", "transformer")
LATENCY_LENGTHS = (1, 8, 16, 32, 48, 64)
LATENCY_BATCHES = (1, 64)
STEP_LENGTHS = (8, 16, 32, 48, 64)
STEP_BATCH = 64


def fastest_ms(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn``, in ms, after one warm-up call.

    The fastest run, not the median: on a shared machine other jobs only ever add time,
    so the fastest run is the one closest to the model's own cost.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def sequence_batch(vocab: int, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Random real (non-pad) tokens, every row ``length`` long, with random labels."""
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.integers(2, vocab, size=(batch, length)).astype(np.int64),
        "lengths": np.full(batch, length, dtype=np.int64),
        "y": rng.integers(0, 2, size=batch).astype(np.int64),
        "position_y": np.zeros((batch, length), dtype=np.float32),
    }


def epoch_seconds(checkpoint: Path) -> dict[str, float]:
    """Mean wall and CPU seconds per epoch of a finished run (training + validation pass)."""
    history = load_checkpoint(checkpoint)["history"]
    last = history[-1]
    return {"wall": last["seconds"] / len(history), "cpu": last["cpu_seconds"] / len(history)}


def _step(
    net: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
) -> None:
    loss = loss_fn(net, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_step_ms(checkpoint: Path, lengths: tuple[int, ...], repeats: int) -> list[float]:
    """Fastest ms of one optimisation step (forward, backward, AdamW) at batch STEP_BATCH."""
    net, config, recipe = model_from_checkpoint(load_checkpoint(checkpoint))
    net = copy.deepcopy(net).train()
    loss_fn = recipe.make_loss(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    vocab = int(net.vocab_size)  # type: ignore[arg-type]
    out = []
    for length in lengths:
        batch = {
            k: torch.from_numpy(v)
            for k, v in sequence_batch(vocab, STEP_BATCH, length, seed=length).items()
        }

        out.append(fastest_ms(functools.partial(_step, net, loss_fn, optimizer, batch), repeats))
    return out


def export_graph(checkpoint: Path, repository: Path) -> Path:
    """The checkpoint exported (parity-gated) into ``repository``; returns model.onnx."""
    from export.api import export_model  # imports onnx: only where a graph is timed

    return Path(export_model(checkpoint, repository).path) / "model.onnx"


def latency_ms(
    checkpoint: Path,
    onnx_path: Path | None,
    lengths: tuple[int, ...],
    batches: tuple[int, ...],
    repeats: int,
) -> dict[str, dict[int, list[float]]]:
    """runtime ("pytorch", "onnxruntime") -> batch -> fastest ms per batch by length."""
    net, _, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    vocab = int(net.vocab_size)  # type: ignore[arg-type]
    out: dict[str, dict[int, list[float]]] = {"pytorch": {}}
    session = None
    if onnx_path is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # like PyTorch here: one thread
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = {}
    for batch in batches:
        out["pytorch"][batch] = []
        if session is not None:
            out["onnxruntime"][batch] = []
        for length in lengths:
            data = sequence_batch(vocab, batch, length, seed=length)
            feeds = {"tokens": data["tokens"], "lengths": data["lengths"]}
            t_tok, t_len = torch.from_numpy(feeds["tokens"]), torch.from_numpy(feeds["lengths"])
            with torch.no_grad():
                out["pytorch"][batch].append(
                    fastest_ms(functools.partial(net, t_tok, t_len), repeats)
                )
            if session is not None:
                run = functools.partial(session.run, None, feeds)
                out["onnxruntime"][batch].append(fastest_ms(run, repeats))
    return out


@dataclass
class SpeedResult:
    latency_lengths: tuple[int, ...]
    step_lengths: tuple[int, ...]
    # model -> {"wall", "cpu"} -> seconds per epoch, one value per seed
    epoch: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    step_ms: dict[str, list[float]] = field(default_factory=dict)  # model -> by length
    # runtime -> batch -> model -> fastest ms per batch, by length
    latency: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)

    def epoch_cpu(self, model: str) -> float:
        return statistics.fmean(self.epoch[model]["cpu"])

    @property
    def held(self) -> bool:
        """The Transformer trains an epoch in less CPU time than the LSTM."""
        return self.epoch_cpu("transformer") < self.epoch_cpu("lstm")


def compare(
    checkpoints: dict[str, dict[int, Path]],
    reference_seed: int,
    *,
    onnx: bool = True,
    latency_lengths: tuple[int, ...] = LATENCY_LENGTHS,
    batches: tuple[int, ...] = LATENCY_BATCHES,
    step_lengths: tuple[int, ...] = STEP_LENGTHS,
    repeats: int = 30,
    step_repeats: int = 10,
    on_stage: Callable[[str], Any] | None = None,
) -> SpeedResult:
    """``checkpoints``: model -> seed -> checkpoint; the reference seed's models are timed."""
    result = SpeedResult(latency_lengths=tuple(latency_lengths), step_lengths=tuple(step_lengths))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="nnserve-report-") as tmp:
        for name in MODELS:
            per_seed = [epoch_seconds(p) for p in checkpoints[name].values()]
            result.epoch[name] = {k: [e[k] for e in per_seed] for k in ("wall", "cpu")}
            reference = checkpoints[name][reference_seed]
            if on_stage is not None:
                on_stage(f"timing {name}: training steps by length")
            result.step_ms[name] = train_step_ms(reference, tuple(step_lengths), step_repeats)
            onnx_path = None
            if onnx:
                if on_stage is not None:
                    on_stage(f"exporting {name} to ONNX")
                onnx_path = export_graph(reference, Path(tmp))
            if on_stage is not None:
                on_stage(f"timing {name}: inference by length")
            lat = latency_ms(reference, onnx_path, tuple(latency_lengths), tuple(batches), repeats)
            for runtime, by_batch in lat.items():
                for batch, values in by_batch.items():
                    result.latency.setdefault(runtime, {}).setdefault(batch, {})[name] = values
    return result
