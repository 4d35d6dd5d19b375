"""`python -m services --service classify|sequence [options]` (see --help; env NNSERVE_*)."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError

from services.process import configure_logging, serve, serve_workers
from services.settings import Settings


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)  # type: ignore[call-arg]
    except ValidationError as err:  # e.g. plaintext on a public host: say why, no traceback
        reasons = "; ".join(str(e["msg"]) for e in err.errors())
        sys.exit(f"nnserve: invalid settings: {reasons}")
    configure_logging(settings.log_level)
    if settings.workers > 1:
        serve_workers(settings)
    else:
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
