"""Bearer-token authentication and role-based authorisation for every RPC.

Tokens file (NNSERVE_TOKENS_FILE), JSON; only SHA-256 hashes are stored:

    {"tokens": [
      {"name": "gateway", "sha256": "sha256:<64 hex>", "roles": ["infer"]},
      {"name": "deployer", "sha256": "sha256:<64 hex>", "roles": ["admin"]}
    ]}

`python -m services.ops.auth new --name gateway --role infer --file tokens.json` makes a random
token, adds its entry to the file (created if missing) and prints the token, once;
without --file it prints the entry. `python -m services.ops.auth hash` hashes a token read
from stdin.

Clients send `authorization: Bearer <token>` metadata. The presented token is hashed and
compared with every stored hash by hmac.compare_digest (constant time, no early exit).
Missing or unknown token: UNAUTHENTICATED; a known token without the method's role:
PERMISSION_DENIED. Each failure increments nnserve_auth_failures_total{reason}; the
interceptor logs it with the request id. No token text is ever logged or echoed.

The file is re-read when it changes (checked at most once a second); a broken new file
is logged and the previous tokens stay in force.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NoReturn

from prometheus_client import Counter

from services.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)


class Role(StrEnum):
    INFER = "infer"  # inference, metadata, config, statistics, readiness, index
    ADMIN = "admin"  # repository load/unload and every method not listed below; implies infer


PUBLIC = None  # no token needed (unless NNSERVE_AUTH_HEALTH=true)

_KSERVE = "inference.GRPCInferenceService"
_PREDICTOR = "nnserve.v1.Predictor"
_ROUTING = "nnserve.v1.Routing"
_HEALTH = "grpc.health.v1.Health"
_REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

_KSERVE_INFER = (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
)  # fmt: skip
_KSERVE_ADMIN = (
    "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
)  # fmt: skip

# The one method -> role table. A method missing here needs `admin` (fail closed), so a
# future admin API is protected before anyone remembers to list it.
METHOD_ROLES: dict[str, Role | None] = {
    **{f"/{_KSERVE}/{m}": Role.INFER for m in _KSERVE_INFER},
    **{f"/{_KSERVE}/{m}": Role.ADMIN for m in _KSERVE_ADMIN},
    **{
        f"/{_PREDICTOR}/{m}": Role.INFER
        for m in (
            "Classify",
            "Sequence",
            "DescribeModel",
            "Stream",
            "ClassifyStream",
            "SequenceStream",
        )
    },
    **{f"/{_ROUTING}/{m}": Role.ADMIN for m in ("SetShadow", "PromoteShadow")},
    f"/{_HEALTH}/Check": PUBLIC,
    f"/{_HEALTH}/Watch": PUBLIC,
    f"/{_REFLECTION}/ServerReflectionInfo": PUBLIC,
}


def required_role(method: str, auth_health: bool = False) -> Role | None:
    """The role a method needs; None: callable without a token."""
    role = METHOD_ROLES.get(method, Role.ADMIN)
    if role is PUBLIC and auth_health:
        return Role.INFER
    return role


HASH_PREFIX = "sha256:"
MAX_TOKENS = 10_000
MAX_TOKEN_CHARS = 4096  # a longer authorization value is refused before hashing
RELOAD_CHECK_S = 1.0
AUTHORIZATION = "authorization"
# Bounded label values of nnserve_auth_failures_total.
REASONS = ("missing", "malformed", "invalid", "forbidden")


def token_hash(token: str) -> str:
    """The stored form of a token: "sha256:<hex>"."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[Role]

    def allows(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles


class TokensFileError(ValueError):
    pass


def load_tokens(path: Path) -> list[tuple[bytes, Principal]]:
    """Parse and check a tokens file: (sha256 digest, principal) per token."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokensFileError(f"{path}: cannot read: {err}") from None
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_TOKENS:
        raise TokensFileError(f'{path}: expected {{"tokens": [...]}} (at most {MAX_TOKENS})')
    tokens: list[tuple[bytes, Principal]] = []
    for i, entry in enumerate(entries):
        where = f"{path}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise TokensFileError(f"{where}: expected an object")
        name, stored, roles = entry.get("name"), entry.get("sha256"), entry.get("roles")
        if not isinstance(name, str) or not name:
            raise TokensFileError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(stored, str) or not stored.startswith(HASH_PREFIX):
            raise TokensFileError(f"{where}: 'sha256' must be 'sha256:<64 hex digits>'")
        try:
            digest = bytes.fromhex(stored[len(HASH_PREFIX) :])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise TokensFileError(f"{where}: 'sha256' must be 'sha256:<64 hex digits>'")
        valid = {r.value for r in Role}
        if not isinstance(roles, list) or not roles or not all(r in valid for r in roles):
            raise TokensFileError(f"{where}: 'roles' must list some of {sorted(valid)}")
        tokens.append((digest, Principal(name, frozenset(Role(r) for r in roles))))
    return tokens


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Authenticator:
    """Checks a call's bearer token against the tokens file; counts failures."""

    def __init__(self, path: Path, failures: Counter) -> None:
        self.path = path
        self._failures = {reason: failures.labels(reason) for reason in REASONS}
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._tokens = load_tokens(path)  # a bad file at start: the server does not start
        self._checked = time.monotonic()
        log.info("authentication on: %d tokens from %s", len(self._tokens), path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = now
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._tokens = load_tokens(self.path)
            except TokensFileError as err:
                log.error("tokens file not reloaded, previous tokens stay in force: %s", err)
                return
        log.info("tokens file reloaded: %d tokens", len(self._tokens))

    def _fail(self, reason: str, error: Unauthenticated | PermissionDenied) -> NoReturn:
        self._failures[reason].inc()
        raise error

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None, role: Role) -> Principal:
        """The caller's principal, or Unauthenticated / PermissionDenied."""
        self._maybe_reload()
        values = [v for k, v in metadata or () if k == AUTHORIZATION]
        if not values:
            self._fail("missing", Unauthenticated("missing bearer token (authorization metadata)"))
        value = values[0]
        scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
        token = token.strip()
        if (
            len(values) != 1
            or scheme.lower() != "bearer"
            or not token
            or len(value) > MAX_TOKEN_CHARS
        ):
            self._fail(
                "malformed", Unauthenticated("malformed authorization: expected 'Bearer <token>'")
            )
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for digest, principal in self._tokens:  # every entry compared: no early exit
            if hmac.compare_digest(presented, digest):
                found = principal
        if found is None:
            self._fail("invalid", Unauthenticated("invalid bearer token"))
        if not found.allows(role):
            self._fail("forbidden", PermissionDenied(f"this method needs the {role} role"))
        return found


# ---------------------------------------------------------------- helper command


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.ops.auth", description="Make entries for NNSERVE_TOKENS_FILE."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hash", help="hash a token read from stdin (one line)")
    new = commands.add_parser("new", help="make a random token; print it and its file entry")
    new.add_argument("--name", required=True)
    new.add_argument("--role", action="append", choices=[r.value for r in Role], required=True)
    new.add_argument("--file", type=Path, help="tokens file to add the entry to (atomically)")
    opts = parser.parse_args(argv)
    if opts.command == "hash":
        token = sys.stdin.readline().strip()
        if not token:
            print("error: no token on stdin", file=sys.stderr)
            return 2
        print(token_hash(token))
        return 0
    token = secrets.token_urlsafe(32)
    entry = {"name": opts.name, "sha256": token_hash(token), "roles": sorted(set(opts.role))}
    if opts.file is None:
        print(f"token (give it to the client; it is not stored): {token}", file=sys.stderr)
        print(json.dumps(entry))
        return 0
    document: dict[str, list[object]] = {"tokens": []}
    try:
        if opts.file.exists():
            load_tokens(opts.file)  # refuse to extend a file the server would not load
            document = json.loads(opts.file.read_text(encoding="utf-8"))
    except TokensFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    document["tokens"].append(entry)
    tmp = opts.file.with_name(opts.file.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, opts.file)  # a running server reloads the whole new file
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
