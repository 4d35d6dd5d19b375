"""Small, fast training configurations shared by the training and export tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.paths import ROOT

# Enough data for every golden case (>= 72 held-out rows, 4 normal + 3 anomalous runs),
# small enough that all five families train in a few seconds.
TINY: dict[str, dict[str, Any]] = {
    "perceptron": {"n_samples": 2000, "epochs": 2},
    "mlp": {"n_samples": 2000, "epochs": 2, "hidden": [16, 16], "baseline_epochs": 1},
    "cnn": {"epochs": 1, "channels": [4, 8], "hidden": 16},
    "lstm": {"n_samples": 600, "epochs": 1, "embed_dim": 8, "hidden": 16},
    "transformer": {"n_samples": 600, "epochs": 1, "d_model": 16, "heads": 4, "ff_dim": 32},
}


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <args>`` the way a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
