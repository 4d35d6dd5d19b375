"""python -m tools.import_graph [--root DIR]: no import cycles, no arrows back up.

Parses every .py file of the project's packages with :mod:`ast` (nothing is imported or
run), builds the module import graph (absolute and relative imports, including those
inside functions and under ``if TYPE_CHECKING:``) and fails (exit 1), printing each
offence, on

- an import cycle: every strongly connected component of more than one module;
- an arrow back up: a package importing a top-level package that LAYERS does not allow.

An import names its module: ``from a.b import c`` is an edge to ``a.b.c`` when that is a
module of the project, else to ``a.b``; ``import a.b.c`` is an edge to ``a.b.c`` only (not
to the parent packages it also runs). Imports by string (importlib) are not seen.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Top-level package -> the other top-level packages of the project it may import.
LAYERS: dict[str, frozenset[str]] = {
    # The model contract (numpy only): imports nothing of the project (not even protos).
    "contract": frozenset(),
    # The .proto files, their generated modules (not parsed) and the generator: nothing.
    "protos": frozenset(),
    # Offline training: the contract only (export builds on training, not the reverse).
    "training": frozenset({"contract"}),
    # Checkpoint -> ONNX + model.json: the contract and training.
    "export": frozenset({"contract", "training"}),
    # The training report and the families' claims: may export what it measures.
    "evaluation": frozenset({"contract", "training", "export"}),
    # The servers ship without torch: the contract and the generated protos only.
    "services": frozenset({"contract", "protos"}),
    # The Python client: the contract and the generated protos only.
    "nnserve_client": frozenset({"contract", "protos"}),
    # Benchmarks drive everything: any package but the tests.
    "bench": frozenset(
        {"contract", "protos", "training", "export", "evaluation", "services", "nnserve_client"}
    ),
    # Repository tools (this check): nothing of the project.
    "tools": frozenset(),
}
# Project packages that are never parsed but can still be the target of an arrow back up.
UNPARSED = frozenset({"tests"})
SKIP_DIRS = frozenset({".venv", "__pycache__", "node_modules"})


def skipped(rel: Path) -> bool:
    """Not the project's code: generated protobuf modules (protos/*_pb2*.py), and hidden
    folders (caches such as bench/.cache, where the peers' virtualenvs live)."""
    hidden = any(part.startswith(".") for part in rel.parts[:-1])
    return hidden or (rel.parts[0] == "protos" and "_pb2" in rel.name)


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (a project module, or a name under UNPARSED)
    path: str  # file of the import, relative to the root
    line: int


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Module name -> file, for every .py file under the packages that exist in root."""
    modules: dict[str, Path] = {}
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            if SKIP_DIRS.intersection(rel.parts) or skipped(rel):
                continue
            modules[module_name(rel)] = path
    return modules


class Graph:
    def __init__(self, root: Path, layers: dict[str, frozenset[str]] = LAYERS) -> None:
        self.root = root
        self.layers = layers
        self.modules = find_modules(root, layers)
        self.project = set(layers) | UNPARSED
        self.errors: list[str] = []  # files that do not parse
        self.edges: list[Edge] = []
        for name, path in self.modules.items():
            self._scan(name, path)

    def _resolve(self, dotted: str) -> str | None:
        """The project module ``dotted`` names (its longest known prefix), else None."""
        if dotted.split(".")[0] not in self.project:
            return None
        parts = dotted.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in self.modules:
                return candidate
            parts.pop()
        return dotted  # a package that is not parsed (tests) or a module that does not exist

    def _scan(self, name: str, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        except (SyntaxError, UnicodeDecodeError) as exc:
            self.errors.append(f"{rel}: cannot parse: {exc}")
            return
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [self._resolve(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = self._from_module(name, is_package, node)
                if parent is None:
                    self.errors.append(f"{rel}:{node.lineno}: relative import beyond the top")
                    continue
                targets = [
                    f"{parent}.{alias.name}"
                    if f"{parent}.{alias.name}" in self.modules
                    else self._resolve(parent)
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target is not None and target != name:
                    self.edges.append(Edge(name, target, rel, node.lineno))

    @staticmethod
    def _from_module(name: str, is_package: bool, node: ast.ImportFrom) -> str | None:
        """The module ``from X import ...`` names, relative ones resolved (None: too far up)."""
        if not node.level:
            return node.module or ""
        package = name.split(".") if is_package else name.split(".")[:-1]
        if node.level > len(package):
            return None
        base = package[: len(package) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def upward(self) -> list[Edge]:
        """Edges into a top-level package the source's package may not import."""
        bad = []
        for edge in self.edges:
            src, dst = edge.source.split(".")[0], edge.target.split(".")[0]
            if src != dst and dst not in self.layers.get(src, frozenset()):
                bad.append(edge)
        return sorted(bad, key=lambda e: (e.path, e.line, e.target))

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        succ: dict[str, set[str]] = {m: set() for m in self.modules}
        for edge in self.edges:
            if edge.target in succ:
                succ[edge.source].add(edge.target)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        components: list[list[str]] = []
        for start in sorted(succ):
            if start in index:
                continue
            work = [(start, iter(sorted(succ[start])))]
            index[start] = low[start] = len(index)
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is None:
                    work.pop()
                    if work:
                        low[work[-1][0]] = min(low[work[-1][0]], low[node])
                    if low[node] == index[node]:
                        component = []
                        while True:
                            member = stack.pop()
                            on_stack.discard(member)
                            component.append(member)
                            if member == node:
                                break
                        if len(component) > 1:
                            components.append(sorted(component))
                elif child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
        return sorted(components)


def check(root: Path, layers: dict[str, frozenset[str]] = LAYERS) -> tuple[Graph, list[str]]:
    """The graph of the project under root and one line per problem (none: it passes)."""
    graph = Graph(root, layers)
    problems = list(graph.errors)
    for component in graph.cycles():
        members = set(component)
        problems.append(f"import cycle between {len(component)} modules: {', '.join(component)}")
        seen = set()
        for edge in graph.edges:
            pair = (edge.source, edge.target)
            if edge.source in members and edge.target in members and pair not in seen:
                seen.add(pair)
                problems.append(f"  {edge.path}:{edge.line}: {edge.source} -> {edge.target}")
    for edge in graph.upward():
        src = edge.source.split(".")[0]
        allowed = ", ".join(sorted(layers.get(src, frozenset()))) or "nothing of the project"
        problems.append(
            f"upward import: {edge.path}:{edge.line}: {edge.source} -> {edge.target} "
            f"({src} may import {allowed})"
        )
    return graph, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.import_graph",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="repository root (default: the checkout this module is in)",
    )
    args = parser.parse_args(argv)
    graph, problems = check(args.root)
    if problems:
        print("\n".join(problems))
        print(
            f"import graph: FAILED: {len(graph.cycles())} cycle(s), "
            f"{len(graph.upward())} upward import(s), {len(graph.errors)} unreadable"
        )
        return 1
    unique = {(e.source, e.target) for e in graph.edges}
    print(
        f"import graph: {len(graph.modules)} modules, {len(unique)} edges: "
        "no cycles, no upward imports"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
