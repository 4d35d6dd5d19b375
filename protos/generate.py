"""Generate the checked-in Python protobuf/gRPC modules and their type stubs.

    python -m protos.generate          # (re)write protos/*_pb2*.py and *.pyi
    python -m protos.generate --check  # exit 1 if regenerating would change anything

Every ``protos/*.proto`` is compiled with the repository root as the only import
root (``import "protos/model_config.proto";``), so the outputs are importable as
``from protos import grpc_service_pb2``. The compiler is grpc_tools.protoc from the
pinned grpcio-tools (its Python API, no system protoc) and the stubs come from the
pinned mypy-protobuf plugins; the generated code records those versions, so other
versions are refused rather than producing a silent diff.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent

# Must match the dev pins in pyproject.toml.
PINNED = {"grpcio-tools": "1.81.1", "mypy-protobuf": "5.1.0"}

_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)

GENERATED_GLOBS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def _check_pins() -> None:
    for dist, want in PINNED.items():
        have = metadata.version(dist)
        if have != want:
            raise SystemExit(
                f"{dist}=={have} is installed but protos are generated with {dist}=={want}; "
                "install the dev dependencies from pyproject.toml"
            )


def _plugin(name: str) -> str:
    """Path of a protoc plugin script installed next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install mypy-protobuf=={PINNED['mypy-protobuf']}")
    return found


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generated_files(directory: Path) -> set[str]:
    """Names of the generated modules and stubs in ``directory``."""
    return {p.name for pattern in GENERATED_GLOBS for p in directory.glob(pattern)}


def generate(out_root: Path) -> Path:
    """Compile every proto into ``out_root``/protos; returns that folder."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    _check_pins()
    well_known = resources.files("grpc_tools") / "_proto"
    out = str(out_root)
    common = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
    ]
    messages = [str(p) for p in proto_files()]
    # gRPC stubs only for files that declare a service (no empty *_pb2_grpc modules).
    services = [str(p) for p in proto_files() if _SERVICE.search(p.read_text())]
    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    for outputs, files in (
        ([f"--python_out={out}", f"--mypy_out=quiet:{out}"], messages),
        ([f"--grpc_python_out={out}", f"--mypy_grpc_out=quiet:{out}"], services),
    ):
        rc = protoc.main([*common, *outputs, *files])
        if rc != 0:
            raise SystemExit(f"grpc_tools.protoc failed with exit code {rc}")
    return out_root / "protos"


def diff(fresh: Path, checked_in: Path) -> list[str]:
    """Generated files that are missing, stale or different in ``checked_in``."""
    new, old = generated_files(fresh), generated_files(checked_in)
    problems = [f"missing: protos/{n}" for n in sorted(new - old)]
    problems += [f"stale (no proto produces it): protos/{n}" for n in sorted(old - new)]
    problems += [
        f"differs: protos/{n}"
        for n in sorted(new & old)
        if not filecmp.cmp(fresh / n, checked_in / n, shallow=False)
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder and fail if anything differs",
    )
    opts = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        problems = diff(fresh, PROTO_DIR)
        if opts.check:
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print(
                    "generated code is out of date: run python -m protos.generate", file=sys.stderr
                )
                return 1
            print(f"protos: {len(generated_files(fresh))} generated files up to date")
            return 0
        for name in sorted(generated_files(PROTO_DIR) - generated_files(fresh)):
            (PROTO_DIR / name).unlink()
        for name in sorted(generated_files(fresh)):
            shutil.copyfile(fresh / name, PROTO_DIR / name)
        print(f"protos: wrote {len(generated_files(fresh))} files ({len(problems)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
