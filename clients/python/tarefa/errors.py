"""Errors as Python exceptions named after the gRPC status codes.

Every call to the scheduler that fails raises a subclass of :class:`TarefaError`, e.g.
``tarefa.NotFound`` for an unknown task id or ``tarefa.Unavailable`` when the scheduler (or its
Redis) cannot be reached. They are also ``grpc.RpcError`` (with ``code()`` and ``details()``),
so code written against the raw stubs keeps working.
"""

from __future__ import annotations

from typing import Optional

import grpc


class TarefaError(grpc.RpcError):
    """A call to the scheduler failed. ``code`` is the ``grpc.StatusCode``."""

    #: The gRPC status code of this class.
    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: Optional[grpc.StatusCode] = None):
        super().__init__(details)
        self.status = code or self.status_code
        self.message = details

    def code(self) -> grpc.StatusCode:  # the grpc.Call interface
        return self.status

    def details(self) -> str:  # the grpc.Call interface
        return self.message

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


class Cancelled(TarefaError):
    """The call was cancelled (by the client, usually)."""

    status_code = grpc.StatusCode.CANCELLED


class Unknown(TarefaError):
    """An error the server did not classify."""

    status_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(TarefaError):
    """A request field is wrong; the message names it (e.g. ``task_type: is required``)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(TarefaError):
    """The call did not finish within its deadline."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(TarefaError):
    """No such task (never submitted, or its record expired)."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TarefaError):
    """The thing to create exists already."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(TarefaError):
    """The caller's credentials do not allow this call."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TarefaError):
    """A configured limit was hit (payload size, batch size…)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(TarefaError):
    """The task's state forbids the action (e.g. cancelling a finished task)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(TarefaError):
    """The call was aborted."""

    status_code = grpc.StatusCode.ABORTED


class OutOfRange(TarefaError):
    """A value is out of range."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(TarefaError):
    """The scheduler does not know this call (an older version)."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(TarefaError):
    """The scheduler failed; its log has the details."""

    status_code = grpc.StatusCode.INTERNAL


class Unavailable(TarefaError):
    """The scheduler or its Redis cannot be reached now: retry later."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(TarefaError):
    """Unrecoverable data loss."""

    status_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(TarefaError):
    """No valid credentials (token, client certificate) were sent."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {
    cls.status_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_rpc_error(error: grpc.RpcError) -> TarefaError:
    """The :class:`TarefaError` subclass for a ``grpc.RpcError`` (itself if it is one)."""
    if isinstance(error, TarefaError):
        return error
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    status = code() if callable(code) else grpc.StatusCode.UNKNOWN
    message = details() if callable(details) else str(error)
    cls = _BY_CODE.get(status, TarefaError)
    return cls(message or "", status)


__all__ = ["TarefaError", "from_rpc_error"] + [cls.__name__ for cls in _BY_CODE.values()]
