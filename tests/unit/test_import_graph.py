"""tools.import_graph: the real tree passes; a tree with a cycle and arrows back up fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tools import import_graph


def test_the_repository_has_no_cycles_and_no_upward_imports() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.import_graph"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no cycles, no upward imports" in proc.stdout


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TREE = {
    "training/__init__.py": "",
    "training/models/__init__.py": "",
    # A cycle: an absolute import one way, a relative one inside a function back.
    "training/models/a.py": "from training.models import b\n",
    "training/models/b.py": "def f():\n    from . import a\n",
    # Arrows back up: under TYPE_CHECKING and from the servers.
    "training/c.py": (
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from export.api import x\n"
    ),
    "export/__init__.py": "",
    "export/api.py": "from training.models import a\nimport contract.model\n",  # allowed
    "services/__init__.py": "",
    "services/s.py": "import training.models.a\nfrom protos import p\n",
    "bench/__init__.py": "",
    "bench/x.py": "from tests import helpers\nimport services.s\n",
    # Generated protobuf modules are not parsed.
    "protos/__init__.py": "",
    "protos/p_pb2.py": "import services.s\n",
    # Not a package of the project: not parsed.
    ".venv/lib/training/evil.py": "import services\n",
}


def test_a_cycle_and_upward_imports_fail_naming_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, TREE)
    assert import_graph.main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "import cycle between 2 modules: training.models.a, training.models.b" in out
    assert "training/models/a.py:1: training.models.a -> training.models.b" in out
    assert "training/models/b.py:2: training.models.b -> training.models.a" in out
    upward = [line for line in out.splitlines() if line.startswith("upward import:")]
    assert upward == [
        "upward import: bench/x.py:1: bench.x -> tests (bench may import contract, evaluation, "
        "export, nnserve_client, protos, services, training)",
        "upward import: services/s.py:1: services.s -> training.models.a "
        "(services may import contract, protos)",
        "upward import: training/c.py:4: training.c -> export.api (training may import contract)",
    ]
    assert "FAILED: 1 cycle(s), 3 upward import(s)" in out


def test_the_same_tree_without_them_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        {
            **TREE,
            "training/models/b.py": "def f():\n    pass\n",
            "training/c.py": "import contract.model\n",
            "services/s.py": "from protos import p\n",
            "bench/x.py": "import services.s\nimport training.models.a\n",
        },
    )
    assert import_graph.main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no cycles, no upward imports" in out


def test_every_package_has_a_rule_and_only_known_packages_are_allowed() -> None:
    known = set(import_graph.LAYERS) | import_graph.UNPARSED
    for package, allowed in import_graph.LAYERS.items():
        assert package not in allowed
        assert allowed <= known
        assert "tests" not in allowed
    assert import_graph.LAYERS["services"] == {"contract", "protos"}
    assert import_graph.LAYERS["training"] == {"contract"}
