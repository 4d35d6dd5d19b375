"""Synthetic loan applications: a linearly separable rule and a banded, non-linear one.

Both variants share the same eight applicant features and the same feature
distributions; only the approval rule differs. Labels are flipped with a small,
stated probability (``label_noise``) so no model can reach 100%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Rule = Literal["linear", "nonlinear"]

LABELS = ["rejected", "approved"]


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    description: str


# Column order of the model input; model.json repeats it for clients.
FEATURES: tuple[Feature, ...] = (
    Feature("age", "years", "applicant age"),
    Feature("years_experience", "years", "years in the current line of work"),
    Feature("monthly_income", "USD", "gross monthly income"),
    Feature("debt_ratio", "ratio", "existing monthly debt payments / monthly income"),
    Feature("credit_score", "points", "credit bureau score, 300-850"),
    Feature("loan_amount", "USD", "requested principal"),
    Feature("loan_term_months", "months", "requested repayment term"),
    Feature("dependents", "count", "number of financial dependents"),
)
FEATURE_NAMES = [f.name for f in FEATURES]

# Fixed reference scales for the linear rule (not fitted, so the rule is the same for
# every seed and sample size).
_LINEAR_CENTER = np.array([46.0, 10.0, 5200.0, 0.26, 680.0, 18000.0, 55.0, 1.2])
_LINEAR_SCALE = np.array([16.0, 9.0, 3000.0, 0.15, 70.0, 16000.0, 28.0, 1.1])
# Sign says which way a feature pushes towards approval.
_LINEAR_WEIGHTS = np.array([0.15, 0.45, 1.0, -1.2, 0.9, -0.7, 0.25, -0.3])
_LINEAR_BIAS = 0.1
# Applicants this close to the linear boundary (in score units) are not generated, so the
# clean rule is separable with a margin; noise then flips a few labels.
_LINEAR_MARGIN = 0.05


@dataclass(frozen=True)
class LoanData:
    """Train/validation/test arrays; x is raw feature values (FP32), y class ids."""

    rule: Rule
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    seed: int
    label_noise: float

    @property
    def split_description(self) -> str:
        n = len(self.y_train) + len(self.y_val) + len(self.y_test)
        return (
            f"held-out {len(self.y_test) / n:.0%} of {n} generated applications "
            f"({self.rule} rule, label noise {self.label_noise:.0%}), seed {self.seed}"
        )

    def feature_stats(self) -> list[dict[str, Any]]:
        """Per-feature normalisation (training split) and range, in column order."""
        mean = self.x_train.mean(axis=0)
        std = self.x_train.std(axis=0)
        lo = self.x_train.min(axis=0)
        hi = self.x_train.max(axis=0)
        return [
            {
                "name": f.name,
                "unit": f.unit,
                "description": f.description,
                "mean": float(mean[i]),
                "std": float(std[i]),
                "min": float(lo[i]),
                "max": float(hi[i]),
            }
            for i, f in enumerate(FEATURES)
        ]

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": "tabular",
            "rule": self.rule,
            "labels": list(LABELS),
            "features": self.feature_stats(),
            "split": self.split_description,
            "seed": self.seed,
            "label_noise": self.label_noise,
        }


def _sample_applicants(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plausible, mildly correlated applicant features; returns (n, 8) float64."""
    age = rng.uniform(18.0, 75.0, n)
    # Experience cannot exceed working years since 18.
    experience = np.minimum(rng.gamma(2.0, 5.0, n), age - 18.0)
    income = np.exp(rng.normal(np.log(3800.0), 0.45, n)) + 120.0 * experience
    debt_ratio = np.clip(rng.beta(2.0, 5.0, n) * 0.95, 0.0, 0.95)
    credit = np.clip(rng.normal(640.0 + 1.2 * (age - 18.0), 75.0, n), 300.0, 850.0)
    loan = np.clip(np.exp(rng.normal(np.log(14000.0), 0.8, n)), 1000.0, 200000.0)
    term = rng.choice(np.array([12.0, 24.0, 36.0, 48.0, 60.0, 72.0, 84.0, 120.0]), n)
    dependents = np.minimum(rng.poisson(1.2, n), 6).astype(np.float64)
    return np.stack([age, experience, income, debt_ratio, credit, loan, term, dependents], 1)


def linear_score(x: np.ndarray) -> np.ndarray:
    """Score of the linear rule; approved iff > 0."""
    z = (x - _LINEAR_CENTER) / _LINEAR_SCALE
    return z @ _LINEAR_WEIGHTS + _LINEAR_BIAS


def debt_cap(income: np.ndarray) -> np.ndarray:
    """Highest debt ratio accepted: 0.35, rising to 0.55 between incomes 2,500 and 10,000."""
    return 0.35 + 0.20 * np.clip((income - 2500.0) / 7500.0, 0.0, 1.0)


def nonlinear_rule(x: np.ndarray) -> np.ndarray:
    """Banded approval policy (bool): no single hyperplane can express it.

    - age band 25-60 (too young: thin file; near retirement: term risk);
    - debt-ratio band: at least 0.07 (zero debt means no credit history, also refused)
      and at most ``debt_cap(income)``: an interaction between debt ratio and income;
    - credit score at least 560.
    """
    age, income, debt, credit = x[:, 0], x[:, 2], x[:, 3], x[:, 4]
    in_age = (age >= 25.0) & (age <= 60.0)
    in_debt = (debt >= 0.07) & (debt <= debt_cap(income))
    return in_age & in_debt & (credit >= 560.0)


def make_loans(
    rule: Rule,
    n: int = 40000,
    seed: int = 7,
    label_noise: float = 0.01,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> LoanData:
    """Generate ``n`` applications, label them with ``rule``, split train/val/test."""
    if rule not in ("linear", "nonlinear"):
        raise ValueError(f"unknown rule {rule!r}")
    rng = np.random.default_rng([seed, 0 if rule == "linear" else 1])
    if rule == "linear":
        # Oversample, then drop applicants inside the margin band around the boundary.
        pool = _sample_applicants(rng, int(n * 1.3) + 16)
        score = linear_score(pool)
        pool = pool[np.abs(score) >= _LINEAR_MARGIN][:n]
        if len(pool) < n:  # pragma: no cover - the oversampling factor is ample
            raise RuntimeError("margin filter removed too many samples")
        x = pool
        y = linear_score(x) > 0
    else:
        x = _sample_applicants(rng, n)
        y = nonlinear_rule(x)
    flip = rng.random(n) < label_noise
    labels = np.where(flip, ~y, y).astype(np.int64)
    x = x.astype(np.float32)
    order = rng.permutation(n)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return LoanData(
        rule=rule,
        x_train=x[train],
        y_train=labels[train],
        x_val=x[val],
        y_val=labels[val],
        x_test=x[test],
        y_test=labels[test],
        seed=seed,
        label_noise=label_noise,
    )
