"""The training report's measured claims: datasets, comparison rules and a tiny full run.

The accuracy claims themselves are the report's business (it states whether each held);
these tests check the machinery that measures them.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.claims import memory, seeds, spatial, speed
from evaluation.report import Plan, write_report
from tests.support.training import TINY, run_cli
from training import MODEL_NAMES
from training.data.digits import load_digits_data
from training.data.gaps import DECIDING_IDS, FILLER_IDS, make_gap_logs
from training.data.logs import PAD_ID, VOCABULARY
from training.models.cnn import CNN, CNNConfig

# ----------------------------------------------------------------- gap dataset


@pytest.mark.parametrize("gap", [0, 3, 8, 64])
def test_gap_data_puts_the_deciding_event_exactly_gap_back(gap: int) -> None:
    data = make_gap_logs(gap, n=300, seed=5, max_prefix=7)
    deciding = np.array(DECIDING_IDS)
    for split in (data.train, data.val, data.test):
        rows = np.arange(len(split))
        at = split.lengths - 1 - gap  # index of the deciding event
        assert np.all((split.lengths >= gap + 1) & (split.lengths <= gap + 8))
        np.testing.assert_array_equal(split.tokens[rows, at], deciding[split.labels])
        # Exactly one deciding event per row; the rest are fillers, then padding.
        assert np.all(np.isin(split.tokens, deciding).sum(1) == 1)
        real = np.arange(split.tokens.shape[1])[None, :] < split.lengths[:, None]
        others = real & ~np.isin(split.tokens, deciding)
        assert np.all(np.isin(split.tokens[others], FILLER_IDS))
        assert np.all(split.tokens[~real] == PAD_ID)
    labels = np.concatenate([data.train.labels, data.val.labels, data.test.labels])
    assert 0.4 < labels.mean() < 0.6
    assert len(labels) == 300


def test_gap_data_is_deterministic_and_its_fillers_carry_no_label() -> None:
    a, b = make_gap_logs(16, n=2000, seed=3), make_gap_logs(16, n=2000, seed=3)
    np.testing.assert_array_equal(a.train.tokens, b.train.tokens)
    assert not np.array_equal(a.train.tokens, make_gap_logs(16, n=2000, seed=4).train.tokens)
    # The last event (a filler) is drawn independently of the label.
    last = a.train.tokens[np.arange(len(a.train)), a.train.lengths - 1]
    for label in (0, 1):
        assert len(np.unique(last[a.train.labels == label])) == len(FILLER_IDS)
    assert {VOCABULARY[i] for i in DECIDING_IDS} == {"auth.token.validated", "auth.token.rejected"}
    with pytest.raises(ValueError):
        make_gap_logs(-1)


def test_recurrent_classifier_decides_from_the_last_real_event() -> None:
    torch.manual_seed(0)
    meta = make_gap_logs(4, n=50).metadata()
    for cell in memory.CELLS:
        model = memory.RecurrentClassifier(memory.GapConfig(cell=cell, hidden=8), meta).eval()
        tokens = torch.randint(2, len(VOCABULARY), (3, 10))
        lengths = torch.tensor([4, 7, 10])
        garbage = tokens.clone()
        garbage[0, 4:] = 5
        garbage[1, 7:] = 9
        with torch.no_grad():
            torch.testing.assert_close(
                model.logits(tokens, lengths), model.logits(garbage, lengths)
            )
            alone = model.logits(tokens[:1, :4], lengths[:1])
            torch.testing.assert_close(model.logits(tokens, lengths)[:1], alone)
    rnn = memory.RecurrentClassifier(memory.GapConfig(cell="rnn", hidden=8), meta)
    lstm = memory.RecurrentClassifier(memory.GapConfig(cell="lstm", hidden=8), meta)
    assert rnn.recurrent.hidden_size == lstm.recurrent.hidden_size == 8
    # Chrono initialisation: forget bias in [0, log(max_length - 1)], input bias its negative.
    bias = (lstm.recurrent.bias_ih_l0 + lstm.recurrent.bias_hh_l0).detach()
    forget, input_ = bias[8:16], bias[:8]
    assert torch.all(forget >= 0) and torch.all(forget <= np.log(meta["max_length"] - 1))
    torch.testing.assert_close(input_, -forget)
    with pytest.raises(ValueError, match="cell"):
        memory.RecurrentClassifier(memory.GapConfig(cell="gru"), meta)


def test_memory_reach_is_the_longest_gap_every_seed_clears() -> None:
    result = memory.MemoryResult(gaps=(8, 16, 32, 64), seeds=(1, 2))
    result.accuracy = {
        "rnn": {8: [0.99, 0.95], 16: [0.93, 0.89], 32: [0.6, 0.55], 64: [0.5, 0.52]},
        "lstm": {8: [1.0, 1.0], 16: [0.99, 0.98], 32: [0.97, 0.91], 64: [0.95, 0.7]},
    }
    assert result.reach("rnn") == 8  # one seed below 0.9 at gap 16
    assert result.reach("lstm") == 32
    assert result.held
    result.accuracy["lstm"][8] = [0.95, 0.85]  # a miss at the first gap: reach 0
    assert result.reach("lstm") == 0
    assert not result.held


# ----------------------------------------------------------------- CNN vs MLP


def test_shift_images_moves_pixels_and_drops_what_leaves_the_frame() -> None:
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    x[0, 0, 3, 5] = 7.0
    x[0, 0, 0, 0] = 1.0
    moved = spatial.shift_images(x, dy=1, dx=-1)
    assert moved[0, 0, 4, 4] == 7.0
    assert moved.sum() == 7.0  # the corner pixel left the frame
    assert spatial.shift_images(x, 0, 0).tolist() == x.tolist()
    xs, ys = spatial.shifted_copies(x, np.array([3]), shift=1)
    assert xs.shape == (8, 1, 8, 8) and ys.tolist() == [3] * 8
    positions = {tuple(np.argwhere(img[0] == 7.0)[0]) for img in xs}
    assert positions == {(3 + dy, 5 + dx) for dy, dx in spatial.DIRECTIONS}


def test_pixel_mlp_is_sized_like_the_cnn() -> None:
    meta = load_digits_data().metadata()
    target = spatial.parameter_count(CNN(CNNConfig(), meta))
    widths = spatial.matched_widths(target, 64, 10)
    mlp = spatial.PixelMLP(spatial.PixelMLPConfig(widths=widths), meta)
    assert len(widths) == 2 and widths[0] == widths[1]
    assert spatial.parameter_count(mlp) == spatial.mlp_parameters(64, widths, 10)
    assert abs(spatial.parameter_count(mlp) - target) / target < 0.01
    logits = mlp.logits(torch.from_numpy(load_digits_data().x_test[:4]))
    assert logits.shape == (4, 10)


def test_spatial_claim_needs_a_lead_on_every_seed_and_both_test_sets() -> None:
    result = spatial.SpatialResult(shift=1, parameters={"cnn": 10, "mlp": 10}, widths=(3, 3))
    result.seeds = [1, 2]
    result.accuracy = {
        "cnn": {"held-out": [0.98, 0.97], "shifted": [0.96, 0.95]},
        "mlp": {"held-out": [0.97, 0.96], "shifted": [0.90, 0.91]},
    }
    assert result.held
    result.accuracy["mlp"]["held-out"][1] = 0.975  # the MLP wins one seed
    assert not result.held


# ----------------------------------------------------------------- seed rows


def test_seed_row_statistics() -> None:
    row = seeds.SeedRow("x", "f1", 0.92, (1, 2, 3), (0.9, 0.95, 1.0))
    assert row.mean == pytest.approx(0.95)
    assert row.spread == pytest.approx(0.05)  # sample standard deviation
    assert (row.low, row.high) == (0.9, 1.0)
    assert row.margin == pytest.approx(-0.02)
    assert not row.passed
    assert seeds.SeedRow("x", "f1", 0.9, (1, 2, 3), (0.9, 0.95, 1.0)).passed  # >= bar
    assert seeds.SeedRow("x", "f1", 0.9, (1,), (0.93,)).spread == 0.0


# ----------------------------------------------------------------- a tiny full report

TINY_PLAN = Plan(
    seeds=(1, 2, 3),
    overrides=TINY,
    gaps=(2, 5),
    gap_overrides={"n_samples": 200, "epochs": 1, "embed_dim": 4, "hidden": 8},
    onnx=False,
    latency_lengths=(1, 4),
    latency_batches=(1, 3),
    step_lengths=(4, 8),
    latency_repeats=1,
    step_repeats=1,
    progress=False,
)


@pytest.fixture(scope="module")
def tiny_report(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("report")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        write_report(out, out / "work", TINY_PLAN, command="tiny")
    return out, stdout.getvalue(), stderr.getvalue()


def test_tiny_report_writes_every_section_and_plot(tiny_report: tuple[Path, str, str]) -> None:
    out, stdout, stderr = tiny_report
    text = (out / "report.md").read_text()
    assert stdout.strip() == text.strip()  # the report's numbers are what it printed
    for png in (
        "training_curves.png",
        "digits_confusion.png",
        "decision_regions.png",
        "sequence_accuracy_by_length.png",
        "seeds.png",
        "cnn_vs_mlp.png",
        "lstm_vs_rnn.png",
        "transformer_vs_lstm_time.png",
    ):
        assert (out / png).stat().st_size > 5000, png
    # Five claims, each with its verdict.
    assert len(re.findall(r"^Held here: \*\*(yes|no)\*\*", text, re.M)) == 5
    # One progress line per stage, counted up front.
    steps = re.findall(r"^\[(\d+)/(\d+)\] ", stderr, re.M)
    total = TINY_PLAN.stages()
    assert [int(k) for k, _ in steps] == list(range(1, total + 1))
    assert {int(n) for _, n in steps} == {total}
    # Checkpoints of every model and seed, in the work folder.
    for seed in TINY_PLAN.seeds:
        for name in MODEL_NAMES:
            assert (out / "work" / f"seed-{seed}" / name / "checkpoint.pt").is_file()
            assert not (out / "work" / f"seed-{seed}" / name / "curves.png").exists()


def test_tiny_report_seed_table(tiny_report: tuple[Path, str, str]) -> None:
    out, _, _ = tiny_report
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["quality_across_seeds"]
    assert [r["model"] for r in rows] == list(MODEL_NAMES)
    text = (out / "report.md").read_text()
    for r in rows:
        values = [r["values"][str(s)] for s in TINY_PLAN.seeds]
        assert len(values) == 3
        assert r["mean"] == pytest.approx(np.mean(values))
        assert r["spread"] == pytest.approx(np.std(values, ddof=1))
        assert r["passed"] == all(v >= r["bar"] for v in values)
        start = f"| {r['model']} | {r['metric']} | {r['bar']:g} | "
        line = next(ln for ln in text.splitlines() if ln.startswith(start))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3:6] == [f"{v:.4f}" for v in values]
        assert cells[6:8] == [f"{r['mean']:.4f}", f"{r['spread']:.4f}"]


def test_tiny_report_comparisons_have_one_value_per_seed_and_length(
    tiny_report: tuple[Path, str, str],
) -> None:
    out, _, _ = tiny_report
    claims = json.loads((out / "summary.json").read_text())["claims"]
    cnn = claims["cnn_vs_mlp"]
    assert cnn["seeds"] == list(TINY_PLAN.seeds)
    for model in spatial.MODELS:
        for test_set in spatial.TEST_SETS:
            assert len(cnn["accuracy"][model][test_set]) == 3
    assert (
        abs(cnn["parameters"]["mlp"] - cnn["parameters"]["cnn"]) / cnn["parameters"]["cnn"] < 0.05
    )
    gaps = claims["lstm_vs_rnn"]
    assert set(gaps["accuracy"]) == set(memory.CELLS)
    for cell in memory.CELLS:
        assert list(gaps["accuracy"][cell]) == ["2", "5"]
        assert all(
            len(v) == 3 and all(0 <= a <= 1 for a in v) for v in gaps["accuracy"][cell].values()
        )
    assert gaps["parameters"]["lstm"] > gaps["parameters"]["rnn"]  # same hidden size
    timing = claims["transformer_vs_lstm"]
    for model in speed.MODELS:
        assert len(timing["epoch_seconds"][model]["cpu"]) == 3
        assert all(v > 0 for v in timing["epoch_seconds"][model]["cpu"])
        assert len(timing["step_ms"][model]) == len(TINY_PLAN.step_lengths)
        for batch in TINY_PLAN.latency_batches:
            assert len(timing["latency_ms"]["pytorch"][str(batch)][model]) == 2
    assert "onnxruntime" not in timing["latency_ms"]  # onnx=False


def test_report_cli_rejects_repeated_seeds(tmp_path: Path) -> None:
    result = run_cli("evaluation.report", "--out", str(tmp_path), "--seeds", "1", "1")
    assert result.returncode == 2
    assert "distinct" in result.stderr
    assert not (tmp_path / "report.md").exists()
