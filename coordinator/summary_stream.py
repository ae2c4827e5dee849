"""Summary queries to one region node instance over one long-lived stream.

A unary ``GetSummaries`` per region per global query costs a whole call on both sides
(measured here: ~260 µs of the node's CPU and ~140 µs of the coordinator's per call).
``StreamSummaries`` carries the same queries as messages of one bidirectional stream
per instance (~110 µs each side), so a fan-out to many regions costs less than half as
much. Concurrent global queries share the stream: each query gets an id, its answer
is matched by that id, and each waits under its own deadline.

The stream opens on first use. When it breaks (the node went away, the connection
dropped, a write on the dead connection made grpc.aio end the call with INTERNAL), every
query waiting on it fails as UNAVAILABLE, whatever status the stream ended with (but
UNIMPLEMENTED and refused credentials, which concern every query alike): the federation
treats that like a failed call (failover, coverage), and the next query opens a new
stream. A query whose write finds the stream already over (before its reader noticed)
never reached the node, so it is asked once more on a new stream, within its deadline.
A node that does not implement ``StreamSummaries`` is asked with unary calls for
:attr:`SummaryStream.UNARY_RETRY_S`, then the stream is tried again (the node may have
been upgraded in place, at the same address).

Answers stay encoded: the stream reads only each answer's query id and hands over the
``GetSummariesResponse`` bytes, which :func:`nethical_grpc.convert.summaries_answer_from_bytes`
reads in one compiled pass instead of building a message tree first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc

from nethical_grpc import convert, wire
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

log = logging.getLogger(__name__)

ChannelSource = Callable[[], grpc.aio.Channel]
AnswerFuture = asyncio.Future[bytes]
Pending = dict[int, AnswerFuture]
_Outgoing = tuple[region_node_pb2.StreamSummariesRequest, AnswerFuture]

_SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"]
_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['StreamSummaries'].name}"
_ANSWER = region_node_pb2.StreamSummariesResponse.DESCRIPTOR.fields_by_name
_QUERY_ID = _ANSWER["query_id"].number
_SUMMARIES = _ANSWER["summaries"].number
_ERROR = _ANSWER["error"].number
#: Entries of queries that gave up, beyond twice the live ones, an outbox may hold
#: before it is pruned (see _Call.put)
_OUTBOX_SLACK = 16


class SummaryCallError(Exception):
    """A summary query that got no answer: the status it failed with, and why."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class _NotSent(SummaryCallError):
    """The stream had ended before the query could be written: it never reached the node."""


@dataclass(eq=False)
class _Call:
    """One open ``StreamSummaries`` call: its queries, its writer and its reader."""

    call: Any  # grpc.aio.StreamStreamCall
    # queries asked on this call and not yet answered, sent or not (query id -> answer)
    pending: Pending = field(default_factory=dict)
    # queries waiting for the writer, in order (with queries that gave up before their
    # turn, until the writer reaches them or the outbox is pruned: see ``put``)
    outbox: collections.deque[_Outgoing] = field(default_factory=collections.deque)
    # set while the outbox holds a query (the writer waits on it when it is empty)
    queued: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    writer: asyncio.Task[None] | None = None

    def put(self, message: region_node_pb2.StreamSummariesRequest, answer: AnswerFuture) -> None:
        """Queue ``message`` for the writer. Queries that gave up while the writer was
        held (a node that stopped reading: its writes wait on flow control) are dropped
        once they outnumber the live ones, so the outbox holds at most about twice the
        queries still waiting, not every query asked since the writes stalled."""
        outbox = self.outbox
        if len(outbox) >= 2 * len(self.pending) + _OUTBOX_SLACK:
            live = [entry for entry in outbox if not entry[1].done()]
            outbox.clear()
            outbox.extend(live)
        outbox.append((message, answer))
        self.queued.set()

    async def next_out(self) -> _Outgoing:
        """The next query for the writer, in order (waits while there is none)."""
        while not self.outbox:
            self.queued.clear()
            await self.queued.wait()
        return self.outbox.popleft()

    def fail_unsent(self, details: str, *, retry: bool = True) -> None:
        """The queries still in the outbox never reached the node: ``_NotSent`` (asked
        again on a new call), or with ``retry=False`` (the stream was closed on purpose)
        a plain UNAVAILABLE."""
        kind = _NotSent if retry else SummaryCallError
        while self.outbox:
            _, answer = self.outbox.popleft()
            if not answer.done():
                answer.set_exception(kind(grpc.StatusCode.UNAVAILABLE, details))


class SummaryStream:
    """``GetSummaries`` semantics over one ``StreamSummaries`` call, opened lazily.

    ``channel`` gives the channel to the node (the current one, should it be replaced).

    A query never waits for its own write: it puts its message in the call's outbox and
    waits for its answer under its deadline, while one writer task per call sends the
    messages in order. So a call whose writes stall (a channel still connecting to an
    address that accepts TCP and never speaks HTTP/2, a node that stopped reading) holds
    no query past its deadline, and a query whose deadline passed before its turn is not
    sent at all.
    """

    #: Seconds a node that answered UNIMPLEMENTED is asked with unary calls before the
    #: stream is tried again.
    UNARY_RETRY_S: ClassVar[float] = 600.0

    def __init__(self, channel: ChannelSource) -> None:
        self._channel = channel
        self._current: _Call | None = None
        self._ids = itertools.count(1)
        self._unary_until: float | None = None  # time.monotonic() of the next stream try
        self.opened = 0  # streams opened so far (a reopen follows each break)

    @property
    def unary_only(self) -> bool:
        """Whether queries go as unary calls now (the node lacked the stream method)."""
        return self._unary_until is not None and time.monotonic() < self._unary_until

    @property
    def is_open(self) -> bool:
        return self._current is not None

    async def query(self, request: region_node_pb2.GetSummariesRequest, timeout_s: float) -> bytes:
        """The node's answer to ``request``, an encoded ``GetSummariesResponse``, within
        ``timeout_s`` (``SummaryCallError``)."""
        if self.unary_only:
            return await self._unary(request, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            try:
                return await self._streamed(request, timeout_s)
            except _NotSent:
                # the stream ended (and its reader had not said so yet) before the query
                # left: it is safe to ask once more, on a fresh stream
                return await self._streamed(request, _remaining(deadline, loop))
        except SummaryCallError as err:
            if err.code is not grpc.StatusCode.UNIMPLEMENTED:
                raise
        # an older node: no stream method (asked again after a while: it may be upgraded)
        self._unary_until = time.monotonic() + self.UNARY_RETRY_S
        return await self._unary(request, _remaining(deadline, loop))

    async def close(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        current.call.cancel()
        tasks = [t for t in (current.reader, current.writer) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        current.fail_unsent("summary stream closed", retry=False)
        _fail(current.pending, grpc.StatusCode.UNAVAILABLE, "summary stream closed")

    # -- internals ------------------------------------------------------------------

    async def _unary(self, request: region_node_pb2.GetSummariesRequest, timeout_s: float) -> bytes:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(self._channel())
        try:
            response: region_node_pb2.GetSummariesResponse = await stub.GetSummaries(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise SummaryCallError(err.code(), err.details() or "") from None
        return response.SerializeToString()

    async def _streamed(
        self, request: region_node_pb2.GetSummariesRequest, timeout_s: float
    ) -> bytes:
        loop = asyncio.get_running_loop()
        current = self._open()
        pending = current.pending
        query_id = next(self._ids)
        answer: asyncio.Future[bytes] = loop.create_future()
        pending[query_id] = answer
        expiry = loop.call_later(timeout_s, _expire, pending, query_id, timeout_s)
        try:
            message = region_node_pb2.StreamSummariesRequest(query_id=query_id, query=request)
            current.put(message, answer)
            return await answer
        finally:
            expiry.cancel()
            pending.pop(query_id, None)
            if answer.done() and not answer.cancelled():
                # failed while its caller was away (cancelled by its own deadline, say):
                # retrieved here, so asyncio logs no "never retrieved" error
                answer.exception()

    def _open(self) -> _Call:
        if self._current is None:
            # answers arrive as bytes (no response deserializer): see _read; queries are
            # written one by one, so the call starts without a request iterator
            method = self._channel().stream_stream(
                _METHOD,
                request_serializer=region_node_pb2.StreamSummariesRequest.SerializeToString,
                response_deserializer=None,
            )
            current = _Call(method())  # type: ignore[call-arg]
            current.reader = asyncio.ensure_future(self._read(current))
            current.writer = asyncio.ensure_future(self._write(current))
            self._current = current
            self.opened += 1
        return self._current

    async def _write(self, current: _Call) -> None:
        while True:
            message, answer = await current.next_out()
            if answer.done():
                continue  # its deadline passed before its turn: not sent
            try:
                await current.call.write(message)
            except Exception as exc:  # the call is over: this query never reached the node
                if self._current is current:
                    self._current = None  # queries from now on open a new call
                if not answer.done():  # its caller may have given up during the write
                    answer.set_exception(_NotSent(grpc.StatusCode.UNAVAILABLE, f"stream: {exc}"))
                current.fail_unsent(f"stream: {exc}")
                reader = current.reader
                if reader is not None and not reader.done():
                    await asyncio.wait([reader], timeout=0.05)  # it tells the sent ones why
                self._broken(current, grpc.StatusCode.UNAVAILABLE, f"stream: {exc}")
                return

    async def _read(self, current: _Call) -> None:
        code, details = grpc.StatusCode.UNAVAILABLE, "summary stream ended"
        pending = current.pending
        try:
            async for raw in current.call:
                query_id, error, summaries = _open_answer(raw)
                future = pending.pop(query_id, None)
                if future is None or future.done():
                    continue  # a query that gave up waiting
                if error is not None:
                    err = region_node_pb2.SummaryQueryError.FromString(error)
                    future.set_exception(
                        SummaryCallError(convert.status_code_from_number(err.code), err.message)
                    )
                else:
                    future.set_result(summaries)
        except grpc.aio.AioRpcError as err:
            code, details = _stream_failure(err.code(), err.details() or "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything else ends this stream, not the coordinator
            log.warning("summary stream failed: %s", exc)
            details = f"summary stream failed: {exc}"
        self._broken(current, code, details)

    def _broken(self, current: _Call, code: grpc.StatusCode, details: str) -> None:
        """``current`` is over: the next query opens a new call; what was sent fails with
        ``code``, what was not is ``_NotSent`` (asked again on the new call)."""
        if self._current is current:
            self._current = None
        current.call.cancel()
        writer = current.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        current.fail_unsent(details)
        _fail(current.pending, code, details)


def _open_answer(raw: bytes) -> tuple[int, bytes | None, bytes]:
    """``(query_id, error, summaries)`` of an encoded ``StreamSummariesResponse``: the
    ``SummaryQueryError`` when it is one, else the ``GetSummariesResponse``, both encoded.

    Reads the envelope's own fields only, as protobuf would: occurrences of the same
    message field merge (their bytes concatenate), the last ``result`` member set wins,
    fields of another wire type or number are skipped. ``ValueError`` if it does not
    parse.
    """
    query_id = 0
    member = 0
    payload = b""
    for number, value in wire.top_level_fields(raw):
        if number == _QUERY_ID and isinstance(value, int):
            query_id = value
        elif number in (_SUMMARIES, _ERROR) and isinstance(value, bytes):
            payload = payload + value if member == number else value
            member = number
    if member == _ERROR:
        return query_id, payload, b""
    return query_id, None, payload


#: Statuses of the stream itself that say something about every query on it, so the
#: queries keep them: UNIMPLEMENTED (an older node: ask with unary calls) and the node's
#: refusal of the coordinator's credentials (logged as such by the federation).
_KEPT_STREAM_CODES = frozenset(
    {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def _stream_failure(code: grpc.StatusCode, details: str) -> tuple[grpc.StatusCode, str]:
    """What the queries waiting on a stream that ended with ``code`` fail with.

    A query's own error arrives as an answer (``SummaryQueryError``), never as the
    stream's status. A status of the stream is about the stream: the node went away, the
    connection dropped, or a write on the broken connection made grpc.aio end the call
    with INTERNAL ("Internal error from Core"). Those queries never got an answer from
    this node, and another replica may give one, so they fail as UNAVAILABLE (which the
    federation fails over on), with the stream's own status in the details.
    """
    if code in _KEPT_STREAM_CODES:
        return code, details
    return grpc.StatusCode.UNAVAILABLE, f"summary stream ended: {code.name}: {details}"


def _remaining(deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    remaining = deadline - loop.time()
    if remaining <= 0:
        raise SummaryCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    return remaining


def _fail(pending: Pending, code: grpc.StatusCode, details: str) -> None:
    for future in list(pending.values()):
        if not future.done():
            future.set_exception(SummaryCallError(code, details))
    pending.clear()


def _expire(pending: Pending, query_id: int, timeout_s: float) -> None:
    future = pending.pop(query_id, None)
    if future is not None and not future.done():
        future.set_exception(
            SummaryCallError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s:g} s")
        )
