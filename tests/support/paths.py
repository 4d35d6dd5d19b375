"""Where the repository is, for tests that run its commands or read its files."""

from __future__ import annotations

from pathlib import Path

# tests/support/paths.py -> the repository root.
ROOT = Path(__file__).resolve().parents[2]
