"""The client CLI (`python -m nnserve_client`) run the way a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from tests.support.paths import ROOT


def client_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m nnserve_client *args` from the repository root, output captured; `env`
    adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "nnserve_client", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **env} if env is not None else None,
    )
