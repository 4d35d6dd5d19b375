"""Training: deterministic datasets, every family's dry run, checkpoints, masking."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tests.support.training import TINY, run_cli
from training import MODEL_NAMES
from training.api import checkpoint_path, train
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.data.digits import load_digits_data
from training.data.loans import FEATURE_NAMES, make_loans, nonlinear_rule
from training.data.logs import ANOMALY_KINDS, PAD_ID, VOCABULARY, decode, is_valid, make_logs
from training.models.lstm import LSTMConfig, LSTMDetector
from training.models.mlp import MLPConfig
from training.models.transformer import TransformerConfig, TransformerDetector
from training.registry import get_recipe
from training.trainer import fit

# ----------------------------------------------------------------- datasets


@pytest.mark.parametrize("rule", ["linear", "nonlinear"])
def test_loans_are_deterministic_per_seed(rule: str) -> None:
    a = make_loans(rule, n=600, seed=3)
    b = make_loans(rule, n=600, seed=3)
    c = make_loans(rule, n=600, seed=4)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape[1] == len(FEATURE_NAMES) == 8
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 600


def test_loan_label_noise_is_as_stated() -> None:
    data = make_loans("nonlinear", n=20000, seed=5, label_noise=0.05)
    x = np.concatenate([data.x_train, data.x_val, data.x_test]).astype(np.float64)
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    flipped = np.mean(nonlinear_rule(x) != y.astype(bool))
    assert 0.04 < flipped < 0.06


def test_nonlinear_loans_defeat_a_linear_model() -> None:
    """The MLP's data must not be linearly separable; the perceptron's must be."""
    scores = {}
    for rule in ("linear", "nonlinear"):
        d = make_loans(rule, n=6000, seed=7)
        mean, std = d.x_train.mean(0), d.x_train.std(0)
        clf = LogisticRegression(max_iter=2000).fit((d.x_train - mean) / std, d.y_train)
        scores[rule] = clf.score((d.x_test - mean) / std, d.y_test)
    assert scores["linear"] > 0.95
    assert scores["nonlinear"] < 0.8


def test_digits_split_is_fixed_and_stratified() -> None:
    a, b = load_digits_data(seed=7), load_digits_data(seed=7)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert a.x_train.shape[1:] == (1, 8, 8)
    assert a.x_train.min() == 0.0 and a.x_train.max() == 16.0
    assert set(np.unique(a.y_test)) == set(range(10))
    other = load_digits_data(seed=8)
    assert not np.array_equal(a.x_test, other.x_test)


def test_logs_are_deterministic_per_seed() -> None:
    a, b, c = make_logs(n=300, seed=3), make_logs(n=300, seed=3), make_logs(n=300, seed=4)
    for split in ("train", "val", "test"):
        for field in ("tokens", "lengths", "labels", "position_labels", "kinds"):
            np.testing.assert_array_equal(
                getattr(getattr(a, split), field), getattr(getattr(b, split), field)
            )
    assert not np.array_equal(a.train.tokens, c.train.tokens)


def test_log_labels_match_the_grammar() -> None:
    data = make_logs(n=1500, seed=11, max_length=64)
    split = data.train
    seen_kinds = set()
    for i in range(len(split)):
        n = int(split.lengths[i])
        events = decode(split.tokens[i], n)
        assert 1 <= n <= 64
        assert np.all(split.tokens[i, n:] == PAD_ID)
        assert np.all(split.position_labels[i, n:] == 0)
        flagged = int(split.position_labels[i].sum())
        if split.labels[i] == 0:
            assert is_valid(events), events
            assert flagged == 0
        else:
            assert not is_valid(events), events
            assert flagged >= 1
            seen_kinds.add(ANOMALY_KINDS[split.kinds[i] - 1])
    assert seen_kinds == set(ANOMALY_KINDS)
    assert 0.3 < split.labels.mean() < 0.5  # anomaly_rate 0.4
    assert len(VOCABULARY) >= 30


def test_grammar_accepts_interleaving_and_rejects_broken_life_cycles() -> None:
    flush = ["metrics.flush.started", "metrics.flush.completed"]
    health = ["scheduler.tick", "healthcheck.started", "healthcheck.passed"]
    interleaved = [health[0], flush[0], health[1], flush[1], health[2]]
    assert is_valid(interleaved)
    assert not is_valid(health[:2])  # truncated
    assert not is_valid([health[0], health[2]])  # missing step
    assert not is_valid([health[1], health[0], health[2]])  # reordered
    assert not is_valid([*health, "worker.crashed"])  # unexpected event


# ----------------------------------------------------------------- training


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_family_trains_a_dry_run_step(name: str, tmp_path: Path) -> None:
    result = train(name, dry_run=True, runs_dir=tmp_path, overrides=TINY[name], progress=False)
    assert result.checkpoint == checkpoint_path(tmp_path, name, dry_run=True)
    assert not checkpoint_path(tmp_path, name).exists()  # a dry run never replaces a model
    payload = load_checkpoint(result.checkpoint)
    assert payload["metrics"]["dry_run"] is True
    assert payload["metrics"]["quality_bar"]["passed"] is False
    assert len(payload["history"]) == 1
    assert payload["config"]["seed"] == 7
    model, _, recipe = model_from_checkpoint(payload)
    assert recipe.name == name
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cli_dry_run_and_bad_model_name(tmp_path: Path) -> None:
    ok = run_cli("training", "--model", "perceptron", "--dry-run", "--runs", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "perceptron" / "checkpoint.dry-run.pt").exists()
    bad = run_cli("training", "--model", "resnet", "--runs", str(tmp_path))
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


def test_checkpoint_is_plain_data_and_rebuilds_the_model(tmp_path: Path) -> None:
    result = train("mlp", runs_dir=tmp_path, overrides=TINY["mlp"], progress=False)
    payload = torch.load(result.checkpoint, weights_only=True)  # no code can run
    assert set(payload) >= {"state_dict", "config", "metrics", "data", "history"}
    assert not any(isinstance(v, torch.nn.Module) for v in payload.values())
    assert payload["data"]["features"][0]["name"] == "age"
    assert "perceptron_on_same_data_accuracy" in payload["metrics"]["extra"]
    assert (tmp_path / "mlp" / "metrics.json").exists()
    assert (tmp_path / "mlp" / "curves.png").stat().st_size > 1000
    model, config, _ = model_from_checkpoint(payload)
    assert isinstance(config, MLPConfig) and config.hidden == (16, 16)
    x = torch.from_numpy(make_loans("nonlinear", n=200, seed=1).x_test)
    probs, logits = model(x)
    assert torch.allclose(probs.sum(1), torch.ones(len(x)))
    assert torch.equal(probs.argmax(1), logits.argmax(1))


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="not an nnserve checkpoint"):
        load_checkpoint(bad)


def test_early_stopping_stops_when_validation_stalls() -> None:
    recipe = get_recipe("perceptron")
    config = recipe.config_cls.from_dict(
        {**recipe.config_cls().to_dict(), "n_samples": 1000, "epochs": 20, "patience": 2, "lr": 0.0}
    )
    data = recipe.load_data(config)
    model = recipe.build_model(config, data.metadata)
    result = fit(model, recipe, data, config, progress=False)
    # lr = 0: the first epoch sets the best score and nothing improves after it.
    assert result.stopped_early
    assert result.best_epoch == 1
    assert len(result.history) == 1 + config.patience


def test_config_round_trips_and_rejects_unknown_fields() -> None:
    config = TransformerConfig(d_model=32, heads=2)
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert dataclasses.asdict(LSTMConfig.from_dict(LSTMConfig().to_dict())) == dataclasses.asdict(
        LSTMConfig()
    )
    with pytest.raises(ValueError, match="unknown"):
        LSTMConfig.from_dict({"hidden_size": 3})


# ----------------------------------------------------------------- sequence masking


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (LSTMDetector, LSTMConfig(hidden=16, embed_dim=8)),
        (TransformerDetector, TransformerConfig(d_model=16)),
    ],
)
def test_padding_never_changes_real_positions(cls: type, config: object) -> None:
    torch.manual_seed(0)
    meta = {"vocabulary": VOCABULARY, "pad_id": 0, "unknown_id": 1, "max_length": 64}
    model = cls(config, meta).eval()
    lengths = torch.tensor([1, 5, 17, 64, 3, 40, 2])
    tokens = torch.zeros(len(lengths), 64, dtype=torch.int64)
    gen = torch.Generator().manual_seed(1)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(2, len(VOCABULARY), (n,), generator=gen)
    # Garbage beyond each length must not matter either.
    tokens_garbage = tokens.clone()
    for i, n in enumerate(lengths.tolist()):
        tokens_garbage[i, n:] = torch.randint(0, len(VOCABULARY), (64 - n,), generator=gen)
    with torch.no_grad():
        seq, pos = model(tokens, lengths)
        seq_g, pos_g = model(tokens_garbage, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone_seq, alone_pos = model(tokens[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(seq[i : i + 1], alone_seq, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(pos[i : i + 1, :n], alone_pos, atol=1e-5, rtol=1e-4)
            assert torch.all(pos[i, n:] == 0)
    torch.testing.assert_close(seq, seq_g, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pos, pos_g, atol=1e-5, rtol=1e-4)


def test_quality_bars_on_tabular_models(tmp_path: Path) -> None:
    """Full default training of the fast families meets the stated held-out bars."""
    perceptron = train("perceptron", runs_dir=tmp_path, progress=False).metrics
    mlp = train("mlp", runs_dir=tmp_path, progress=False).metrics
    assert perceptron["accuracy"] >= 0.95 and perceptron["quality_bar"]["passed"]
    assert mlp["accuracy"] >= 0.97 and mlp["quality_bar"]["passed"]
    assert mlp["extra"]["perceptron_on_same_data_accuracy"] <= 0.85
