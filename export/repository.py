"""Model repository layout: <repository>/<name>/<version>/, versions are positive integers.

A version is staged in a hidden sibling folder and published with one rename, so a
reader (the services' repository scan) never sees half a version, and a failed
export leaves nothing behind. An existing version is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from contract.model import versions as contract_versions
from export.errors import ExportError

STAGING_PREFIX = ".staging-"  # not an integer: scanners skip it


def versions(repository: Path, name: str) -> list[int]:
    """Published versions of ``name``, ascending."""
    return contract_versions(repository / name)


def next_version(repository: Path, name: str) -> int:
    existing = versions(repository, name)
    return existing[-1] + 1 if existing else 1


@contextlib.contextmanager
def staging(repository: Path, name: str) -> Iterator[Path]:
    """A private folder next to the versions; removed (with an emptied model folder) on error."""
    folder = repository / name
    created_repo = not repository.exists()
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {folder}: {exc}") from exc
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        # Only folders this call created, and only when empty (a failed first export).
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if created_repo:
            with contextlib.suppress(OSError):
                repository.rmdir()


def publish(stage: Path, repository: Path, name: str, version: int) -> Path:
    """Rename the staged folder to ``version``; never replaces an existing version."""
    target = repository / name / str(version)
    if target.exists():
        raise ExportError(f"version {version} of {name!r} already exists at {target}")
    os.chmod(stage, 0o755)  # mkdtemp creates 0700; the services may run as another user
    try:
        os.rename(stage, target)
    except OSError as exc:
        raise ExportError(f"cannot publish {target}: {exc}") from exc
    return target
