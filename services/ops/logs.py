"""Log setup: plain text, or one JSON object per line (NNSERVE_LOG_FORMAT=json) carrying
the request id and trace id of the call being served, for log pipelines."""

from __future__ import annotations

import json
import logging
import time

from services.ops.calls import CURRENT


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        call = CURRENT.get()
        if call is not None:
            entry["request_id"] = call.request_id
            if call.span is not None:
                entry["trace_id"] = call.trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class Throttled:
    """A log line that a flood of hostile calls cannot turn into a flood of lines: at
    most one per `interval` seconds; the next one says how many were held back."""

    __slots__ = ("_held", "_interval", "_level", "_logger", "_next")

    def __init__(self, logger: logging.Logger, level: int, interval: float = 10.0) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._held = 0

    def log(self, message: str, *args: object) -> bool:
        """Log now, or count the line as held back; True when it was logged."""
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + self._interval
        held, self._held = self._held, 0
        if held:
            message += f" ({held} more like this in the last {self._interval:g} s)"
        self._logger.log(self._level, message, *args)
        return True
