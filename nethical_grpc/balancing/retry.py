"""Which failures are retried, how long to wait, and the deadlines of one logical call.

Only ``UNAVAILABLE`` is retried (the backend could not take the call), plus connection
failures that happened before the call was sent. Caller errors (``INVALID_ARGUMENT``
and every other code) are never retried. A non-idempotent call is retried only when it
provably never left the client.

The per-attempt deadline is published through :func:`remaining_timeout` so a call can
hand it to gRPC (``stub.Method(req, timeout=remaining_timeout())``); async attempts are
also cut off by the balancer itself.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc

_ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "nethical_balancing_attempt_deadline", default=None
)

# Codes that say the backend is at fault (count towards outlier ejection), as opposed
# to the caller (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...).
_BACKEND_FAULT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)

# What gRPC core says when no connection could be made (the call was never sent).
#: How gRPC's own client begins the details of a call it could not send (no connection,
#: no address); a server's message may contain these words anywhere, so only the start
#: of a status the client made itself counts
_NOT_SENT_PREFIXES = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "no connection established",
    "dns resolution failed",
    "empty address list",
)


class NotSentError(ConnectionError):
    """Raise from a call when it failed before anything was sent (always retryable)."""


class InstanceRemovedError(grpc.aio.AioRpcError, NotSentError):
    """A call asked a removed instance for its channel: UNAVAILABLE, never sent.

    A removed instance makes no new channel (nothing would close it); a call that picked
    it just before it left is retried elsewhere, like one that found no connection. An
    instance of a closed balancer refuses the same way (``balancer_closed``; the details
    say the balancer is closed), and the balancer's own retry then ends with
    :class:`BalancerClosedError`.
    """

    def __init__(self, name: str, *, balancer_closed: bool = False) -> None:
        details = (
            f"instance {name}: the balancer is closed"
            if balancer_closed
            else f"instance {name} was removed from the balancer"
        )
        self.balancer_closed = balancer_closed
        grpc.aio.AioRpcError.__init__(
            self,
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details,
            None,
        )


class NoAvailableInstanceError(RuntimeError):
    """No healthy, non-ejected instance to send the call to: UNAVAILABLE.

    The message says why: each instance the call was already sent to, with how it
    failed there (``tried``: instance id -> that failure), or else the state of the
    instances it could have gone to. A retry that found none is raised from the last
    attempt's error.
    """

    def __init__(self, message: str, tried: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.tried: dict[str, str] = dict(tried or {})

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)


#: The details of a call refused by a closed balancer
BALANCER_CLOSED = "the balancer is closed"


class BalancerClosedError(NoAvailableInstanceError):
    """A call through a balancer that was closed: UNAVAILABLE, never sent, not retried.

    A closed balancer picks no instance and makes no channel; its callers see it as they
    see a call with no instance to go to (a :class:`NoAvailableInstanceError`), with
    details saying the balancer is closed (and, for a call retried before the close, the
    instances it was sent to, as ``tried``).
    """

    def __init__(self, tried: Mapping[str, str] | None = None) -> None:
        message = BALANCER_CLOSED
        if tried:
            message += "; tried " + "; ".join(f"{i} ({why})" for i, why in tried.items())
        super().__init__(message, tried)


#: The most characters of one failure kept for a NoAvailableInstanceError's message
_MAX_FAILURE_CHARS = 200


def describe_failure(error: BaseException) -> str:
    """``UNAVAILABLE: overloaded`` for a gRPC error, ``ValueError: ...`` for another."""
    code = status_code(error)
    if code is not None:
        details = getattr(error, "details", None)
        text = f"{code.name}: {(details() if callable(details) else '') or 'no details'}"
    else:
        text = f"{type(error).__name__}: {error}"
    if len(text) > _MAX_FAILURE_CHARS:
        text = text[: _MAX_FAILURE_CHARS - 3] + "..."
    return text


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code of an error, or None for a non-gRPC error."""
    if not isinstance(error, grpc.RpcError):
        return None
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    value = code()
    return value if isinstance(value, grpc.StatusCode) else None


def failed_before_send(error: BaseException) -> bool:
    """True when the call provably never reached a backend (refused connection, ...)."""
    if isinstance(error, ConnectionRefusedError | NotSentError):
        return True
    if status_code(error) is not grpc.StatusCode.UNAVAILABLE:
        return False
    trailers = getattr(error, "trailing_metadata", None)
    if callable(trailers) and trailers():
        return False  # a server sent this status (with its metadata): the call reached it
    details = getattr(error, "details", None)
    text = str(details() if callable(details) else "") or ""
    return text.lower().startswith(_NOT_SENT_PREFIXES)


def is_retryable(error: BaseException, idempotent: bool = True) -> bool:
    """UNAVAILABLE, or a connection failure before sending; never caller errors."""
    if failed_before_send(error):
        return True
    if not idempotent:
        return False
    return status_code(error) is grpc.StatusCode.UNAVAILABLE


def is_backend_fault(error: BaseException | grpc.StatusCode) -> bool:
    """Whether a failure (an error, or the status code a call ended with) counts against
    the instance (for outlier ejection)."""
    if isinstance(error, grpc.StatusCode):
        return error in _BACKEND_FAULT_CODES
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    return status_code(error) in _BACKEND_FAULT_CODES


def is_deadline(error: BaseException | grpc.StatusCode) -> bool:
    """Whether a failure is a missed deadline (a status, or the balancer's own cut-off)."""
    if isinstance(error, grpc.StatusCode):
        return error is grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, TimeoutError):
        return True
    return status_code(error) is grpc.StatusCode.DEADLINE_EXCEEDED


def remaining_timeout(default: float | None = None) -> float | None:
    """Seconds left in the current attempt (inside a balanced call), else ``default``."""
    deadline = _ATTEMPT_DEADLINE.get()
    if deadline is None:
        return default
    return max(deadline - time.monotonic(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after the first attempt, jittered exponential backoff and deadlines.

    The wait before retry ``n`` (0-based) is ``min(max, initial * multiplier**n)``
    scaled by a uniform factor in ``[1 - jitter, 1]``.
    """

    max_retries: int = 2
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 1.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5
    attempt_timeout_s: float | None = None
    total_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not self.backoff_initial_s >= 0:  # NaN too
            raise ValueError("backoff_initial_s must be >= 0")
        if not self.backoff_max_s >= self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if not self.backoff_multiplier >= 1.0:
            raise ValueError("backoff_multiplier must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")
        for name in ("attempt_timeout_s", "total_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds (or None: no limit)")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        try:
            grown = self.backoff_initial_s * self.backoff_multiplier**retry
        except OverflowError:  # multiplier**retry past a float (2.0 ** 1024): long capped
            grown = self.backoff_max_s
        return min(self.backoff_max_s, grown) * (1.0 - self.jitter * rng.random())


class RetryState:
    """The bookkeeping of one logical call across its attempts."""

    __slots__ = (
        "_deadline",
        "_idempotent",
        "_policy",
        "_retry_if",
        "_rng",
        "attempts",
        "last_error",
        "tried",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random,
        timeout: float | None,
        idempotent: bool,
        retry_if: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._idempotent = idempotent
        self._retry_if = retry_if
        total = timeout if timeout is not None else policy.total_timeout_s
        self._deadline = None if total is None else time.monotonic() + total
        self.attempts = 0
        # instance id -> "endpoint: how its last attempt failed" (retried calls only)
        self.tried: dict[str, str] = {}
        self.last_error: BaseException | None = None

    def attempt_deadline(self, attempt_timeout: float | None) -> float | None:
        """Absolute deadline of the next attempt (the earlier of per-attempt and total)."""
        per = attempt_timeout if attempt_timeout is not None else self._policy.attempt_timeout_s
        if per is None:
            return self._deadline
        end = time.monotonic() + per
        return end if self._deadline is None else min(end, self._deadline)

    def failed_on(self, instance_id: str, endpoint: str, error: BaseException) -> None:
        """An attempt on ``instance_id`` failed with ``error`` and the call is retried."""
        where = "" if endpoint == instance_id else f"{endpoint}: "
        self.tried[instance_id] = f"{where}{describe_failure(error)}"
        self.last_error = error

    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def retry_delay(self, error: BaseException) -> float | None:
        """Seconds to wait before retrying after ``error``, or None to give up."""
        if self.attempts > self._policy.max_retries:
            return None
        retryable = (
            self._retry_if(error)
            if self._retry_if is not None
            else is_retryable(error, self._idempotent)
        )
        if not retryable:
            return None
        delay = self._policy.backoff_s(self.attempts - 1, self._rng)
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        return delay


def set_attempt_deadline(deadline: float | None) -> contextvars.Token[float | None]:
    return _ATTEMPT_DEADLINE.set(deadline)


def reset_attempt_deadline(token: contextvars.Token[float | None]) -> None:
    _ATTEMPT_DEADLINE.reset(token)
