"""The coordinator as a gateway: Evaluate routed to region nodes through the balancer.

Which failed Evaluate calls are retried on another instance (the node records every
evaluation in its metrics and the agent's profile, so a repeat may count twice):

* always, when the call provably never reached a node: the connection could not be
  made (refused, no route, DNS), see
  :func:`nethical_grpc.balancing.failed_before_send`;
* always, when the node itself answered UNAVAILABLE with a status of its own (a
  ``google.rpc.Status`` in the trailers): a node does that only for work it did not
  do (evaluation switched off, shutting down);
* only with :attr:`EvaluateRetry.CONNECTION_LOST`, when the connection broke while
  the node had the call (process killed, network cut): the node may have evaluated
  and recorded the action before it went away. A killed node's unflushed records die
  with it, so the retry is usually the only record left; a node that lost only the
  connection counts the action twice. The decision is the same either way.

Everything else (INVALID_ARGUMENT with its BadRequest, RESOURCE_EXHAUSTED, deadlines)
reaches the caller unchanged and is never retried. A call whose connection broke and
that is not retried, or whose retries broke too or reached no node (none left, none
reachable, refused), fails with UNAVAILABLE and ``ErrorInfo.reason``
EVALUATION_IN_DOUBT (``attempts``: how many it made), never with a reason that says the
action went nowhere.

Wire compatibility, used to relay without copying: the coordinator's Evaluate and
EvaluateStream messages carry the action in field 1 like the node's own, and the
answers are field-for-field the node's answers (the gateway adds fields after them),
so the gateway sends its request to the node as is (minus ``region_id``) and parses
the node's answer straight into its own response type.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc

from coordinator.instances import CREDENTIAL_CODES, InstanceRegistry, warn_credentials_refused
from nethical_grpc import telemetry
from nethical_grpc.balancing import (
    Instance,
    NoAvailableInstanceError,
    failed_before_send,
    remaining_timeout,
)
from nethical_grpc.balancing.balancer import no_instance_text
from nethical_grpc.balancing.retry import status_code
from nethical_grpc.errors import InvalidArgument, MeshError, Unavailable, to_status
from nethical_grpc.v1 import coordinator_pb2
from nethical_grpc.validation import quoted

log = logging.getLogger(__name__)

EVALUATE_METHOD = "/nethical_grpc.v1.RegionNodeService/Evaluate"
EVALUATE_STREAM_METHOD = "/nethical_grpc.v1.RegionNodeService/EvaluateStream"

DEFAULT_EVALUATE_TIMEOUT_S = 10.0
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: A last attempt's failures that say it did not do the work (so read as "safe to send
#: again"), which an earlier attempt whose connection broke makes untrue
_NOT_DONE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
)

EvaluateRequest = coordinator_pb2.CoordinatorServiceEvaluateRequest
EvaluateResponse = coordinator_pb2.CoordinatorServiceEvaluateResponse
StreamRequest = coordinator_pb2.CoordinatorServiceEvaluateStreamRequest
StreamResponse = coordinator_pb2.CoordinatorServiceEvaluateStreamResponse


class EvaluateRetry(enum.Enum):
    """When an Evaluate that failed with UNAVAILABLE may go to another instance."""

    NOT_SENT = "not-sent"  # never reached a node, or the node refused it
    CONNECTION_LOST = "connection-lost"  # also: the connection broke mid-call


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """``local_region``: where calls without a region go first (region aware).
    ``stay_in_region``: every call stays in its region (as if each request asked to),
    instead of going to another region when its own has no usable instance."""

    local_region: str = ""
    evaluate_retry: EvaluateRetry = EvaluateRetry.NOT_SENT
    default_timeout_s: float = DEFAULT_EVALUATE_TIMEOUT_S
    stay_in_region: bool = False

    def __post_init__(self) -> None:
        if self.default_timeout_s <= 0:
            raise ValueError("the default Evaluate timeout must be > 0 seconds")


@dataclass
class DeadlineExceeded(MeshError):
    reason: str = "DEADLINE_EXCEEDED"
    code: grpc.StatusCode = grpc.StatusCode.DEADLINE_EXCEEDED


_CREDENTIALS_REFUSED: Final = MeshError(
    message="a region node refused the coordinator's own credentials; see the coordinator's log",
    reason="UPSTREAM_CREDENTIALS_REFUSED",
    code=grpc.StatusCode.INTERNAL,
)


class UpstreamError(Exception):
    """A region node's error status, to hand to the caller unchanged, except a refusal of
    the coordinator's own credentials: the caller gets INTERNAL
    (``UPSTREAM_CREDENTIALS_REFUSED``) without the node's words (which would blame the
    caller's token, or name the coordinator's principal), and the coordinator's log gets
    them."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error
        self.credentials_refused = error.code() in CREDENTIAL_CODES
        if self.credentials_refused:
            warn_credentials_refused("a region node", error.code(), error.details() or "")

    def code(self) -> grpc.StatusCode:
        return _CREDENTIALS_REFUSED.code if self.credentials_refused else self.error.code()

    def details(self) -> str:
        if self.credentials_refused:
            return _CREDENTIALS_REFUSED.message
        return self.error.details() or ""

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The node's rich status (``grpc-status-details-bin``), nothing else."""
        if self.credentials_refused:
            return tuple(
                (key, value)
                for key, value in to_status(_CREDENTIALS_REFUSED).trailing_metadata
                if isinstance(value, bytes)
            )
        details = _status_details(self.error)
        return () if details is None else ((_STATUS_DETAILS_KEY, details),)


def _status_details(error: grpc.aio.AioRpcError) -> bytes | None:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def has_node_status(error: BaseException) -> bool:
    """The failure carries a ``google.rpc.Status`` the node itself wrote."""
    return isinstance(error, grpc.aio.AioRpcError) and _status_details(error) is not None


def node_refused(error: BaseException) -> bool:
    """UNAVAILABLE answered by the node itself: it did not do the work."""
    return status_code(error) is grpc.StatusCode.UNAVAILABLE and has_node_status(error)


def connection_lost(error: BaseException) -> bool:
    """UNAVAILABLE from the transport after the call was sent: the node may have it."""
    return (
        status_code(error) is grpc.StatusCode.UNAVAILABLE
        and not has_node_status(error)
        and not failed_before_send(error)
    )


def stream_broken(error: BaseException) -> bool:
    """A relayed stream ended by its transport rather than by the node: UNAVAILABLE, or
    INTERNAL that carries no status from the node (what gRPC gives a call whose write
    met a connection being torn down)."""
    code = status_code(error)
    return code is grpc.StatusCode.UNAVAILABLE or (
        code is grpc.StatusCode.INTERNAL and not has_node_status(error)
    )


def evaluate_retryable(error: BaseException, policy: EvaluateRetry) -> bool:
    """Whether an Evaluate that failed with ``error`` may be sent to another instance."""
    if failed_before_send(error) or node_refused(error):
        return True
    return policy is EvaluateRetry.CONNECTION_LOST and connection_lost(error)


def in_doubt_error(lost: Sequence[str], attempts: int, retries_failed: str = "") -> Unavailable:
    """EVALUATION_IN_DOUBT: the connections to the ``lost`` endpoints (one or more, the
    last the latest) broke while their nodes had the action, each may have recorded it;
    ``retries_failed``: why the attempts after them reached no node (the call did not end
    on a broken connection)."""
    endpoint = lost[-1]
    if retries_failed:
        where = endpoint if len(lost) == 1 else f"{len(lost)} instances ({', '.join(lost)})"
        text = (
            f"the connection to {where} broke while it had the action, so it may have been "
            f"evaluated and recorded there; the retries reached no node ({retries_failed})"
        )
    elif len(lost) > 1:
        text = (
            f"the connection to {endpoint} broke while it had the action, after "
            f"{len(lost) - 1} earlier attempt(s) on other instances whose connections broke "
            f"too; it may have been evaluated and recorded on any of the {len(lost)}"
        )
    else:
        text = (
            f"the connection to {endpoint} broke while it had the action; it may have been "
            "evaluated and recorded there, so it was not sent again"
        )
    return Unavailable(
        message=text,
        reason="EVALUATION_IN_DOUBT",
        metadata={"endpoint": endpoint, "attempts": str(attempts)},
    )


class _Methods:
    __slots__ = ("channel", "stream", "unary")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.unary = channel.unary_unary(
            EVALUATE_METHOD,
            request_serializer=EvaluateRequest.SerializeToString,
            response_deserializer=EvaluateResponse.FromString,
        )
        self.stream = channel.stream_stream(
            EVALUATE_STREAM_METHOD,
            request_serializer=StreamRequest.SerializeToString,
            response_deserializer=StreamResponse.FromString,
        )


class Gateway:
    """Routes Evaluate and EvaluateStream to region nodes through the registry's balancer."""

    def __init__(self, registry: InstanceRegistry, settings: GatewaySettings | None = None) -> None:
        self.registry = registry
        self.balancer = registry.balancer
        self.settings = settings or GatewaySettings()
        self._methods: dict[str, _Methods] = {}

    def methods(self, inst: Instance) -> _Methods:
        """The instance's Evaluate callables, rebuilt when its channel changes."""
        channel = inst.channel
        found = self._methods.get(inst.instance_id)
        if found is None or found.channel is not channel:
            if len(self._methods) > 2 * len(self.balancer.instances()) + 16:
                live = {i.instance_id for i in self.balancer.instances()}
                self._methods = {k: v for k, v in self._methods.items() if k in live}
            found = self._methods[inst.instance_id] = _Methods(channel)
        return found

    def region_for(self, region_id: str, field: str = "") -> str | None:
        """The region to route to: the requested one, else the local one, else None (an
        unknown one is INVALID_ARGUMENT on ``field`` + ``region_id``)."""
        if region_id:
            if not self.registry.has_region(region_id):
                raise InvalidArgument.single(
                    f"{field}region_id",
                    f"unknown region {quoted(region_id)}",
                    metadata={"known_regions": ",".join(self.registry.region_ids)},
                )
            return region_id
        return self.settings.local_region or None

    def route(
        self, region_id: str, stay_in_region: bool, field: str = ""
    ) -> tuple[str | None, bool]:
        """The region a call goes to (see :meth:`region_for`) and whether it stays there:
        it asked to, or the coordinator keeps every call in its region. A call that must
        stay but has no region (none named, no local region) is INVALID_ARGUMENT on
        ``field`` + ``region_id``: it could go anywhere."""
        region = self.region_for(region_id, field)
        stay = stay_in_region or self.settings.stay_in_region
        if stay and region is None:
            raise InvalidArgument.single(
                f"{field}region_id",
                "required when the call stays in its region (stay_in_region, or the "
                "coordinator's --stay-in-region), as the coordinator has no local region",
            )
        return region, stay

    def no_instance(
        self, region: str | None, stay: bool, why: str | None = None, **metadata: str
    ) -> Unavailable:
        """UNAVAILABLE ``NO_HEALTHY_INSTANCE``: nothing to send the call to (``why``: the
        balancer's account of the instances tried or their states)."""
        return Unavailable(
            message=why or no_instance_text(region, stay),
            reason="NO_HEALTHY_INSTANCE",
            metadata={
                "region_id": region or "",
                **({"stay_in_region": "true"} if stay else {}),
                **metadata,
            },
        )

    def timeout_for(self, time_remaining: float | None) -> float:
        """The caller's deadline (less a little for the reply), at most the default: a
        cap on how long one relayed call may hold a node, whatever the caller allows."""
        default = self.settings.default_timeout_s
        if time_remaining is None:
            return default
        return max(0.001, min(default, time_remaining - 0.005))

    async def evaluate(self, request: EvaluateRequest, timeout_s: float) -> EvaluateResponse:
        """One action on one instance, retried as the module docstring says.

        Raises :class:`UpstreamError` for a node's own error status, ``MeshError``
        (UNAVAILABLE / DEADLINE_EXCEEDED / INVALID_ARGUMENT) for the gateway's.
        """
        region, stay = self.route(request.region_id, request.stay_in_region)
        # the rest is the node's EvaluateRequest
        request.ClearField("region_id")
        request.ClearField("stay_in_region")
        attempts = 0
        served: Instance | None = None
        # attempt -> endpoint: the node had the action when the connection broke
        lost: dict[int, str] = {}
        policy = self.settings.evaluate_retry

        def attempt(inst: Instance) -> grpc.aio.UnaryUnaryCall[EvaluateRequest, EvaluateResponse]:
            nonlocal attempts, served
            attempts += 1
            served = inst
            return self.methods(inst).unary(request, timeout=remaining_timeout())

        def retry_if(err: BaseException) -> bool:
            if served is not None and connection_lost(err):
                lost[attempts] = served.endpoint
            return evaluate_retryable(err, policy)

        outcome = "failed"
        try:
            response: EvaluateResponse = await self.balancer.execute_request_async(
                attempt, region, timeout_s, retry_if=retry_if, stay_in_region=stay
            )
            outcome = "answered"
        except NoAvailableInstanceError as err:
            outcome = "no_instance"
            if lost:  # an earlier attempt's node may have it: not "never sent"
                why = no_instance_text(region, stay)
                raise in_doubt_error(list(lost.values()), attempts, why) from None
            tried = {"attempts": str(attempts)} if attempts else {}
            raise self.no_instance(region, stay, str(err), **tried) from None
        except TimeoutError:
            raise DeadlineExceeded(
                message=f"no answer within {timeout_s:.3f}s", metadata={"attempts": str(attempts)}
            ) from None
        except grpc.aio.AioRpcError as err:
            endpoint = served.endpoint if served is not None else ""
            if connection_lost(err):
                lost[attempts] = endpoint
                raise in_doubt_error(list(lost.values()), attempts) from None
            if lost and status_code(err) in _NOT_DONE_CODES:
                # the last attempt was not done, but an earlier one's node had the action
                raise in_doubt_error(
                    list(lost.values()), attempts, f"last: {endpoint}: {err.details()}"
                ) from None
            if failed_before_send(err):
                raise Unavailable(
                    message=f"no instance could be reached (last: {endpoint}): {err.details()}",
                    reason="NO_REACHABLE_INSTANCE",
                    metadata={"endpoint": endpoint, "attempts": str(attempts)},
                ) from None
            outcome = "answered"  # the node's own error status
            raise UpstreamError(err) from None
        finally:
            telemetry.get_recorder().record_gateway_call(
                region or "", served.region_id if served is not None else "", outcome
            )
        assert served is not None
        response.endpoint = served.endpoint
        response.attempts = attempts
        return response

    def evaluate_stream(
        self, requests: AsyncIterator[StreamRequest], time_remaining: float | None
    ) -> AsyncIterator[StreamResponse]:
        """Relay a stream to one instance, failing over when safe (see gateway_stream)."""
        from coordinator.gateway_stream import StreamRelay

        return StreamRelay(self, requests, time_remaining).run()
