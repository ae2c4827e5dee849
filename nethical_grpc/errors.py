"""Domain errors and their mapping to canonical gRPC statuses with rich details.

Domain code raises :class:`MeshError` subclasses; servicers let :func:`rpc_errors` turn
them into a ``google.rpc.Status`` with ``BadRequest`` / ``ErrorInfo`` details. Any other
exception becomes a bare INTERNAL status: tracebacks never cross the wire.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, ParamSpec, Self, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

ERROR_DOMAIN = "nethical-mesh"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: a path like ``values[17]`` and what is wrong with it."""

    field: str
    description: str


@dataclass
class MeshError(Exception):
    """Base of the errors that map to a status code, with optional field violations."""

    message: str
    reason: str = "ERROR"
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Sequence[FieldViolation] = ()
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __str__(self) -> str:
        return self.message

    def violations(self) -> Sequence[FieldViolation]:
        return self.field_violations

    @classmethod
    def single(cls, field_path: str, description: str, **kwargs: Any) -> Self:
        """An error about one field."""
        return cls(
            message=f"{field_path}: {description}",
            field_violations=(FieldViolation(field_path, description),),
            **kwargs,
        )


@dataclass
class InvalidArgument(MeshError):
    """Bad input."""

    reason: str = "INVALID_ARGUMENT"
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class ResourceExhausted(MeshError):
    """A bound was hit (cardinality, size)."""

    reason: str = "RESOURCE_EXHAUSTED"
    code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class NotFound(MeshError):
    """What was asked for does not exist here."""

    reason: str = "NOT_FOUND"
    code: grpc.StatusCode = grpc.StatusCode.NOT_FOUND


@dataclass
class Unavailable(MeshError):
    """This server cannot do it now (a part is missing or down)."""

    reason: str = "UNAVAILABLE"
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


def described(field_path: str, exc: BaseException) -> str:
    """``exc``'s message as the description of a violation at ``field_path``: without a
    leading field name, which the path already gives ("page_token is not valid: ..." is
    "is not valid: ..."; "metric: longer than ..." is "longer than ...")."""
    text = str(exc)
    for prefix in (f"{field_path}: ", f"{field_path} "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): short
    enough for a status, a store's reported problem or a log line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


#: Bounds on what a status carries. Message and details travel in the trailers, which a
#: gRPC client refuses past 8 KiB by default (some calls already past 8 KiB, every call
#: past 16 KiB), and then the caller gets RESOURCE_EXHAUSTED with no details at all. So
#: echoed input is clipped (a 1 MiB bad name stays a bad name) and the violations listed
#: stop at a budget; ErrorInfo says how many were left out.
MAX_MESSAGE_BYTES: Final = 512
MAX_FIELD_BYTES: Final = 256
MAX_DESCRIPTION_BYTES: Final = 384
MAX_METADATA_VALUE_BYTES: Final = 256
MAX_VIOLATION_BYTES: Final = 3072
OMITTED_VIOLATIONS_KEY: Final = "omitted_field_violations"


def clip(text: str, max_bytes: int) -> str:
    """``text`` if its UTF-8 form fits ``max_bytes``, else its longest prefix that fits
    with a closing "…" (never a split character). Lone surrogates (the undecodable
    bytes of a ``surrogateescape``'d file name, say), which no status can carry, are
    written as ``\\udcff`` escapes."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    cut = data[: max(0, max_bytes - 3)].decode("utf-8", "ignore")  # "…" is 3 bytes
    return f"{cut}…"


def _bounded_violations(
    violations: Sequence[FieldViolation],
) -> tuple[list[error_details_pb2.BadRequest.FieldViolation], int]:
    """The violations that fit the budget, clipped, and how many were left out."""
    out: list[error_details_pb2.BadRequest.FieldViolation] = []
    used = 0
    for i, v in enumerate(violations):
        field_path = clip(v.field, MAX_FIELD_BYTES)
        description = clip(v.description, MAX_DESCRIPTION_BYTES)
        size = len(field_path.encode()) + len(description.encode()) + 8  # with the framing
        if out and used + size > MAX_VIOLATION_BYTES:
            return out, len(violations) - i
        out.append(
            error_details_pb2.BadRequest.FieldViolation(field=field_path, description=description)
        )
        used += size
    return out, 0


def to_status(error: MeshError) -> grpc.Status:
    """Build the ``grpc.Status`` (with details) for a domain error, within the bounds
    above."""
    details = []
    metadata = {
        clip(k, MAX_FIELD_BYTES): clip(v, MAX_METADATA_VALUE_BYTES)
        for k, v in error.metadata.items()
    }
    violations = error.violations()
    if violations:
        listed, omitted = _bounded_violations(violations)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=listed)))
        if omitted:
            metadata[OMITTED_VIOLATIONS_KEY] = str(omitted)
    details.append(
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
        )
    )
    status = status_pb2.Status(
        code=error.code.value[0], message=clip(error.message, MAX_MESSAGE_BYTES), details=details
    )
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")
    )


P = ParamSpec("P")
R = TypeVar("R")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    if isinstance(exc, MeshError):
        try:
            status = to_status(exc)
        except Exception:  # a malformed error (say, metadata not str): still no traceback
            log.exception("cannot build the status of %r", exc)
        else:
            await context.abort_with_status(status)  # type: ignore[attr-defined]
    log.exception("unhandled error in RPC handler", exc_info=exc)
    await context.abort_with_status(  # type: ignore[attr-defined]
        internal_status()
    )
    raise AssertionError("unreachable")  # abort_with_status always raises


def rpc_errors(
    handler: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Wrap an async unary-response servicer method: map errors to statuses.

    The servicer context must be the handler's last positional argument.
    """

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            context: grpc.aio.ServicerContext[Any, Any] = args[-1]  # type: ignore[assignment]
            await _abort(context, exc)

    return wrapper


def rpc_stream_errors(
    handler: Callable[P, AsyncIterator[R]],
) -> Callable[P, AsyncIterator[R]]:
    """:func:`rpc_errors` for servicer methods that stream their responses."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        try:
            async for item in handler(*args, **kwargs):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            context: grpc.aio.ServicerContext[Any, Any] = args[-1]  # type: ignore[assignment]
            await _abort(context, exc)

    return wrapper


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """The details a client reads back from a failed call."""

    code: grpc.StatusCode
    message: str
    field_violations: tuple[FieldViolation, ...]
    reason: str | None
    metadata: Mapping[str, str]


def details_of(exc: MeshError) -> ErrorDetails:
    """What a client would read back had ``exc`` been raised by a server (a refusal on
    the client's own side, said the same way)."""
    return ErrorDetails(
        exc.code, exc.message, tuple(exc.violations()), exc.reason, dict(exc.metadata)
    )


def details_from_error(err: grpc.RpcError) -> ErrorDetails:
    """Client side: decode a failed call's rich status (its code and message alone when
    the details it carries do not parse or contradict them)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    violations: list[FieldViolation] = []
    reason: str | None = None
    metadata: dict[str, str] = {}
    try:
        status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
        if status is None and isinstance(err, grpc.aio.AioRpcError):
            status = _status_from_aio(err)
    except (ValueError, DecodeError):
        # details that do not parse, or that contradict the call's status (a proxy or
        # another server sent them): the code and message still say what failed
        status = None
    for detail in status.details if status is not None else ():
        try:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata = dict(info.metadata)
        except DecodeError:  # a detail that does not parse as the type it names
            continue
    return ErrorDetails(code, message or "", tuple(violations), reason, metadata)


def _status_from_aio(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None
