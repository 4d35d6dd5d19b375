"""Errors that carry their gRPC status code; one interceptor turns them into statuses.

The core raises these with a message meant for the client. Anything else escaping a
handler is a server fault: INTERNAL with a generic message, traceback in the log.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: a failure the client should see with this status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
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
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotSupported(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class ModelLoadError(Exception):
    """A model could not be loaded or failed its golden check (never reaches clients raw)."""
