"""EvaluateStream through the gateway: one upstream stream per client stream.

The client's stream goes to one instance, picked when the first action arrives (its
``region_id`` picks the region; a later message may repeat it or leave it empty, and one
that names another region ends the stream with INVALID_ARGUMENT, as a message that does
not parse does; ``stay_in_region`` likewise: set by the first message, failovers stay
in the region). Answers come back in request order, so the relay
keeps the actions sent upstream and not yet answered in a queue; each answer settles
the oldest.

When the instance fails mid-stream (UNAVAILABLE, or an INTERNAL the node did not write:
gRPC's own, as when a write meets a connection being torn down), the unanswered actions
move to another instance, in order, and the stream goes on — but only when that is safe:

* nothing is in doubt (every action sent was answered; the rest was never sent), or
  the connection was never made, or the node itself refused with UNAVAILABLE;
* or the coordinator runs with ``EvaluateRetry.CONNECTION_LOST``: actions the broken
  node had may have been evaluated and recorded there, and are evaluated again.

Otherwise the stream ends with UNAVAILABLE, ``ErrorInfo.reason`` STREAM_INTERRUPTED
and metadata ``answered`` (messages answered on this stream), ``in_doubt`` (sent, not
answered) and ``endpoint``. So does a stream whose resent actions (a broken node had
them) find no node left, or run out of failovers: ``in_doubt`` counts them still, and
``endpoint`` names that node (never NO_HEALTHY_INSTANCE, which says nothing was sent).

A message is relayed whole: one action, or a batch (``actions``) that the node answers
with one message of ``results``; the counts above are of messages, so a batch is sent,
answered or in doubt as one. At most ``max_retries`` (the balancer's retry policy)
failovers in a row (with no answer in between) happen per stream. Other upstream
errors reach the caller unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

import grpc

from coordinator.gateway import (
    EvaluateRetry,
    StreamRequest,
    StreamResponse,
    UpstreamError,
    node_refused,
    stream_broken,
)
from nethical_grpc import telemetry
from nethical_grpc.balancing import Instance, failed_before_send
from nethical_grpc.balancing.balancer import no_instance_text
from nethical_grpc.errors import InvalidArgument, MeshError, Unavailable
from nethical_grpc.validation import quoted

if TYPE_CHECKING:
    from coordinator.gateway import Gateway

INBOX_SIZE = 64  # client actions read ahead of the upstream

StreamCall = grpc.aio.StreamStreamCall[StreamRequest, StreamResponse]

# what a write to a call that is already over raises
_CALL_OVER = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError)


class _Interrupted(Exception):
    """The upstream stream ended (or broke) before every action was answered."""

    def __init__(self, error: grpc.aio.AioRpcError | None) -> None:
        super().__init__(error.details() if error is not None else "upstream ended early")
        self.error = error


async def _end_child(task: asyncio.Future[None]) -> None:
    """Cancel ``task`` (started by the current task) and wait until it is over.

    How it ends (its cancellation, an error) is absorbed; a cancellation of the current
    task itself that arrives meanwhile is not: the child is over and it propagates. (While
    the current task waits on the child, its own cancel is passed on to the child, so the
    two arrive alike: its cancel count tells them apart.)
    """
    me = asyncio.current_task()
    before = me.cancelling() if me is not None else 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if me is not None and me.cancelling() > before:
        raise asyncio.CancelledError


def _other_region(index: int, asked: str, region: str) -> InvalidArgument:
    """A later message naming a region the stream is not in: the stream ends with it (as
    with a message that does not parse), after the answers to the messages before it."""
    problem = (
        f"{quoted(asked)} differs from the stream's region {quoted(region)}"
        if region
        else f"{quoted(asked)}, but the stream has no region (its first message named none)"
    )
    return InvalidArgument.single(
        f"request[{index}].region_id",
        f"{problem}: the first message picks the region of the whole stream; leave "
        "region_id empty on later messages, or repeat it",
    )


def _stays_later(index: int) -> InvalidArgument:
    """A later message asking to stay in the region when the first did not: the stream
    may already be elsewhere."""
    return InvalidArgument.single(
        f"request[{index}].stay_in_region",
        "set on a later message only: the first message decides whether the whole stream "
        "stays in its region; set it there (later messages may repeat it)",
    )


class StreamRelay:
    """One client stream relayed to region nodes; see the module docstring."""

    def __init__(
        self,
        gateway: Gateway,
        requests: AsyncIterator[StreamRequest],
        time_remaining: float | None,
    ) -> None:
        self._gw = gateway
        self._lb = gateway.balancer
        self._requests = requests
        self._deadline = None if time_remaining is None else time.monotonic() + time_remaining
        self._inbox: asyncio.Queue[StreamRequest | None] = asyncio.Queue(INBOX_SIZE)
        self._carry: collections.deque[StreamRequest] = collections.deque()  # not yet sent
        self._pending: collections.deque[StreamRequest] = collections.deque()  # sent, unanswered
        self._client_done = False
        self._rng = random.Random()
        self.answered = 0
        self.failovers = 0  # in all
        self._streak = 0  # failovers since the last answer
        # messages at the front of the queue (pending, then carried) that a node whose
        # connection broke had: they may have been evaluated there, whatever follows
        self._doubtful = 0
        self._broken_at = ""  # the latest such node
        # what ended the client's stream early (a message that did not parse): raised once
        # every message before it is answered
        self._client_error: MeshError | None = None
        self._region = ""  # the region the stream asked for (empty: any), for the metrics

    async def _read_client(self) -> None:
        cancelled = False
        try:
            index = 0
            region = ""  # the stream's: the first message's, else the local one
            stays = False  # the stream stays in its region (its first message, or always)
            async for message in self._requests:
                if index == 0:
                    region = message.region_id or self._gw.settings.local_region
                    stays = message.stay_in_region or self._gw.settings.stay_in_region
                else:
                    if message.region_id and message.region_id != region:
                        raise _other_region(index, message.region_id, region)
                    if message.stay_in_region and not stays:
                        raise _stays_later(index)
                    # only the first message names the region and whether the stream
                    # stays there (run() reads and clears them); relayed as is, they
                    # would land on the node's fields 2 and 4
                    message.ClearField("region_id")
                    message.ClearField("stay_in_region")
                index += 1
                await self._inbox.put(message)
        except MeshError as exc:
            self._client_error = exc
        except asyncio.CancelledError:
            # run() is over and reads the inbox no more: waiting for room in a full one
            # to say "done" would never end (and run() waits for this task)
            cancelled = True
            raise
        finally:
            if not cancelled:
                await self._inbox.put(None)

    def _raise_client_error(self) -> None:
        if self._client_error is not None:
            raise self._client_error

    async def _write(self, call: StreamCall) -> None:
        """Send the carried actions, then the client's, then half-close upstream.

        An action counts as sent (pending) from the moment it is handed to the call; a
        write the call refuses (it is already over) puts it back among the unsent.
        """
        while self._carry:
            message = self._carry.popleft()
            if not await self._send(call, message):
                return
        while not self._client_done:
            received = await self._inbox.get()
            if received is None:
                self._client_done = True
                break
            if not await self._send(call, received):
                return
        with contextlib.suppress(*_CALL_OVER):
            await call.done_writing()

    async def _send(self, call: StreamCall, message: StreamRequest) -> bool:
        self._pending.append(message)
        try:
            await call.write(message)
        except _CALL_OVER:  # refused: never sent; the reading side gets the status
            self._pending.pop()
            self._carry.appendleft(message)
            return False
        return True

    def _timeout(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def _pick(self, region: str | None, stay: bool, tried: set[str]) -> Instance:
        inst = self._lb.get_instance(region, tried, stay_in_region=stay) if tried else None
        if inst is None:
            inst = self._lb.get_instance(region, stay_in_region=stay)
        if inst is None:
            telemetry.get_recorder().record_gateway_call(self._region, "", "no_instance")
            if self._doubtful:  # not "went nowhere": a broken node had some of them
                why = no_instance_text(region, stay)
                raise self._interrupted(
                    self._broken_at,
                    f"no instance is left to send its actions to ({why})",
                    self._doubtful,
                )
            raise self._gw.no_instance(region, stay, answered=str(self.answered))
        return inst

    async def run(self) -> AsyncIterator[StreamResponse]:
        reader = asyncio.ensure_future(self._read_client())
        try:
            first = await self._inbox.get()
            if first is None:
                self._client_done = True
                self._raise_client_error()
                return
            region, stay = self._gw.route(first.region_id, first.stay_in_region, "request[0].")
            self._region = region or ""
            first.ClearField("region_id")
            first.ClearField("stay_in_region")
            self._carry.append(first)
            tried: set[str] = set()
            while True:
                inst = self._pick(region, stay, tried)
                try:
                    async with contextlib.aclosing(self._relay(inst)) as answers:
                        async for answer in answers:
                            yield answer
                    self._raise_client_error()
                    return
                except _Interrupted as stop:
                    tried.add(inst.instance_id)
                    await self._fail_over_or_raise(inst, stop.error)
        finally:
            await _end_child(reader)

    async def _relay(self, inst: Instance) -> AsyncGenerator[StreamResponse, None]:
        """Relay to ``inst`` until the stream ends; raises _Interrupted on a failure."""
        budget = self._timeout()  # the caller's: a deadline it sets short blames no one
        call: StreamCall = self._gw.methods(inst).stream(None, timeout=budget)
        recorder = telemetry.get_recorder()
        calls = self._lb.begin(inst)
        writer = asyncio.ensure_future(self._write(call))
        settled = False
        try:
            try:
                async for answer in call:
                    if not self._pending:
                        raise MeshError(
                            message=f"{inst.endpoint} answered more actions than it was sent",
                            reason="UPSTREAM_PROTOCOL_ERROR",
                            code=grpc.StatusCode.INTERNAL,
                        )
                    self._pending.popleft()
                    self.answered += 1
                    self._doubtful = max(0, self._doubtful - 1)
                    self._streak = 0
                    recorder.record_gateway_call(self._region, inst.region_id, "answered")
                    yield answer
            except grpc.aio.AioRpcError as err:
                settled = True
                self._lb.record_failure(inst, err, budget, calls=calls)
                if stream_broken(err):
                    raise _Interrupted(err) from None
                raise UpstreamError(err) from None  # the caller has the answers before it
            # a clean end: the client half-closed and every action it sent was answered
            # (the writer may still be finishing its half-close)
            if not (self._client_done and not self._pending and not self._carry):
                settled = True
                self._lb.record_failure(
                    inst, ConnectionError("upstream stream ended early"), calls=calls
                )
                raise _Interrupted(None)
            settled = True
            self._lb.record_success(inst, None, calls=calls)
        finally:
            try:
                await _end_child(writer)
            finally:
                if not settled:  # the client went away (or we did): stop the upstream too
                    call.cancel()
                    self._lb.record_cancelled(inst, calls=calls)

    async def _fail_over_or_raise(self, inst: Instance, error: grpc.aio.AioRpcError | None) -> None:
        never_reached = error is not None and (failed_before_send(error) or node_refused(error))
        in_doubt = 0 if never_reached else len(self._pending)
        safe = in_doubt == 0 or self._gw.settings.evaluate_retry is EvaluateRetry.CONNECTION_LOST
        if in_doubt:
            self._doubtful = max(self._doubtful, in_doubt)
            self._broken_at = inst.endpoint
        policy = self._lb.retry_policy
        timeout = self._timeout()
        if safe and self._streak < policy.max_retries and (timeout is None or timeout > 0):
            self.failovers += 1
            self._streak += 1
            self._pending.extend(self._carry)
            self._carry, self._pending = self._pending, collections.deque()
            await asyncio.sleep(policy.backoff_s(self._streak - 1, self._rng))
            return
        detail = error.details() if error is not None else "the stream ended early"
        telemetry.get_recorder().record_gateway_call(self._region, inst.region_id, "failed")
        if not safe:
            raise self._interrupted(
                inst.endpoint,
                f"the stream to {inst.endpoint} broke ({detail}) after {self.answered} "
                f"answer(s); {in_doubt} action(s) sent there are unanswered and were not "
                "sent elsewhere",
                in_doubt,
            )
        raise self._interrupted(
            self._broken_at or inst.endpoint,
            f"the stream to {inst.endpoint} broke ({detail}) after {self.answered} "
            f"answer(s) and {self.failovers} failover(s)",
            self._doubtful,
        )

    def _interrupted(self, endpoint: str, text: str, in_doubt: int) -> Unavailable:
        """STREAM_INTERRUPTED: ``in_doubt`` messages were sent to ``endpoint`` (a node
        whose connection broke) and are unanswered: it may have evaluated them."""
        if in_doubt and endpoint:
            text += f"; {in_doubt} action(s) {endpoint} had may have been evaluated there"
        return Unavailable(
            message=text,
            reason="STREAM_INTERRUPTED",
            metadata={
                "answered": str(self.answered),
                "in_doubt": str(in_doubt),
                "endpoint": endpoint,
            },
        )
