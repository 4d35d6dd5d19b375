"""Errors that carry their gRPC status code, and the one rule that turns any exception
into a status (used by the interceptor, the data plane's accounting and the stream path).

The core raises ServingError subclasses with a message meant for the client. Anything
else escaping a handler is a server fault: INTERNAL with a generic message, traceback in
the log. Client strings quoted in a message go through `shown`, so a status never grows
with what a client sent.
"""

from __future__ import annotations

import asyncio

import grpc

MAX_SHOWN_CHARS = 64  # a client string quoted in a status message is cut to this
MAX_MESSAGE_CHARS = 1024  # a whole status message is cut to this


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """repr() of a client-supplied value, cut to `limit` characters (marked with ...)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServingError(Exception):
    """Base class: a failure the client should see with this status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(ServingError):
    """Model not ready, failed to load, or the server is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServingError):
    """The model's queue, or the server's bytes in flight, are at their bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooLarge(ServingError):
    """A request over a size bound (e.g. a message that inflates past max_message_bytes)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotSupported(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class FailedPrecondition(ServingError):
    """The request is valid but the server is not configured for it (model control off)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED


INTERNAL_MESSAGE = "internal server error"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client message for an exception: the rule, written once."""
    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled"
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
