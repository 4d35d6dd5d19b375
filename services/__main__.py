"""`python -m services --service classify|sequence [options]` (see --help; env NNSERVE_*)."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from services.ops.logs import configure_logging
from services.process import run, serve_workers
from services.settings import Settings


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)  # type: ignore[call-arg]
    except ValidationError as err:  # e.g. plaintext on a public host: say why, no traceback
        reasons = "; ".join(str(e["msg"]) for e in err.errors())
        sys.exit(f"nnserve: invalid settings: {reasons}")
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        serve_workers(settings)
    else:
        run(settings)


if __name__ == "__main__":
    main()
