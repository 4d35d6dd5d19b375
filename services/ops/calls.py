"""The call being served: request id and trace span, reachable from any code it runs.

The front end opens a Call per RPC and puts it in a context variable; the data plane
(stage spans) and the JSON log formatter read it. asyncio tasks copy context variables,
so the requests of one stream share their call's id and span.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span

REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


Metadata = Sequence[tuple[str, str | bytes]]


class Call:
    """One RPC as the server sees it; the request id is read or made only when needed."""

    __slots__ = ("_request_id", "metadata", "principal", "span")

    def __init__(self, metadata: Metadata | None, span: Span | None = None) -> None:
        self.metadata = metadata
        self.span = span
        self.principal: str | None = None  # the token's name, once the token is checked
        self._request_id: str | None = None

    @property
    def request_id(self) -> str:
        """The client's `x-request-id` metadata when it is short and plain, else a new id."""
        if self._request_id is None:
            self._request_id = _client_request_id(self.metadata) or uuid.uuid4().hex[:16]
        return self._request_id

    @property
    def trace_id(self) -> str:
        if self.span is None:
            return ""
        return format(self.span.get_span_context().trace_id, "032x")


def _client_request_id(metadata: Metadata | None) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return None


class CallCounter:
    """Calls started on this server, so a drain can wait until none arrive any more."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = 0


CURRENT: ContextVar[Call | None] = ContextVar("nnserve_call", default=None)
