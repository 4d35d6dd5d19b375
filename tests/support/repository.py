"""Changing a model repository under a running server, the way an operator should."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def stage_version(
    repository: Path,
    name: str,
    version: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
    *,
    source: str | None = None,
) -> Path:
    """Add <name>/<version> as a copy of version 1 (of model `source` when given, renamed),
    the way an operator should: copy to a staging name the scan ignores ('.'-prefixed),
    then rename into place atomically."""
    staging = repository / name / f".staging-{version}"
    shutil.copytree(repository / (source or name) / "1", staging)
    path = staging / "model.json"
    doc = json.loads(path.read_text())
    doc["name"], doc["version"] = name, version
    if edit is not None:
        edit(doc)
    path.write_text(json.dumps(doc))
    target = repository / name / str(version)
    os.rename(staging, target)
    return target


def remove_version(repository: Path, name: str, version: int) -> None:
    """Take a version folder out atomically (rename out of the scan pattern, then delete)."""
    gone = repository / name / f".removed-{version}-{time.monotonic_ns()}"
    os.rename(repository / name / str(version), gone)
    shutil.rmtree(gone)


def break_goldens(doc: dict[str, Any]) -> None:
    """Edit a model.json so that its first golden case no longer matches the model."""
    output = next(iter(doc["goldens"]["cases"][0]["outputs"].values()))
    output["data"][0] = float(output["data"][0]) + 0.5
