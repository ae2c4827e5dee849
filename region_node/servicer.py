"""RegionNodeService: parse and validate, call the node, map errors. Nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.message import Message

from nethical_grpc import __version__, convert, registration, telemetry, wire
from nethical_grpc.components import components
from nethical_grpc.errors import (
    InvalidArgument,
    MeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    described,
    rpc_errors,
    rpc_stream_errors,
)
from nethical_grpc.governance.requests import EvaluationRequest
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.privacy import PrivateReleaser
from nethical_grpc.request_parsing import UnparsableRequest
from nethical_grpc.series import GroupSummary, SummaryQuery
from nethical_grpc.storage.audit import AuditStoreError
from nethical_grpc.streams import ReadAhead, read_chunks
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc
from nethical_grpc.validation import quoted
from region_node.evaluation import Evaluator, PendingBatch
from region_node.node import RegionNode
from region_node.stores import NodeStores

Context = grpc.aio.ServicerContext[Any, Any]


_MAX_CACHED_RESPONSES = 64
#: Encoded bytes the cached GetSummaries answers may hold together (each is kept only
#: encoded). Without it 64 answers near the message limit held over a GiB.
_MAX_CACHED_RESPONSE_BYTES = 32 << 20
#: What a StreamSummariesResponse adds around the summaries: the query id and the
#: summaries field's key and length (17 bytes at most), rounded up.
_STREAM_FRAMING_BYTES = 64
_STREAMED = region_node_pb2.StreamSummariesResponse.DESCRIPTOR.fields_by_name
_STREAMED_QUERY_ID_FIELD = _STREAMED["query_id"].number
_STREAMED_SUMMARIES_FIELD = _STREAMED["summaries"].number
_SERIES_FIELD = region_node_pb2.GetSummariesResponse.SERIES_FIELD_NUMBER
#: A StreamSummaries answer: a message, or one already encoded (sent as it is: see
#: ``add_to_server``)
StreamAnswer = region_node_pb2.StreamSummariesResponse | bytes
#: A GetSummaries answer encoded (a ``GetSummariesResponse`` serialised: see
#: ``add_to_server``)
EncodedSummaries = bytes
SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"]


def add_to_server(servicer: RegionNodeServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server``, its summaries answered as the bytes it keeps
    encoded. The generated ``add_RegionNodeServiceServicer_to_server`` works too, but
    its serialisers take messages only: a servicer registered by it alone parses each
    summaries answer into a message, for gRPC to serialise again."""
    servicer.encoded_answers = True
    registration.add_servicer(server, SERVICE, servicer)


class _CachedSummaries:
    """A GetSummaries answer, valid while its query's data, the node's gaps and the windows
    its range covers (see ``RegionNode.windows_for``) stay the same.

    Kept encoded, and only so (its series written straight to bytes: building their
    messages cost a node answering 10,000 series over a second): GetSummaries answers the
    bytes as they are, and StreamSummaries puts its query id's field before them (sent
    unchanged: see ``add_to_server``)."""

    __slots__ = ("encoded", "series_count", "size", "version")

    def __init__(
        self,
        version: tuple[tuple[object, int], int, tuple[object, object]],
        encoded: bytes,
        series_count: int,
    ) -> None:
        self.version = version
        self.encoded = encoded
        self.series_count = series_count
        self.size = len(encoded)

    def check_size(self, limit: int) -> None:
        """Raise ResourceExhausted (``ANSWER_TOO_LARGE``) when this answer, with the
        stream's framing, would not fit in a message of ``limit`` bytes: gRPC would fail
        the call, and on StreamSummaries the whole stream with every query on it."""
        if self.size + _STREAM_FRAMING_BYTES <= limit:
            return
        raise answer_too_large(
            f"{self.series_count} series",
            self.size,
            limit,
            "fewer metrics, a label filter, fewer group_by labels",
        )

    def stream_answer(self, query_id: int) -> bytes:
        """The ``StreamSummariesResponse`` answering query ``query_id`` with this, encoded.

        The summaries are encoded once; each answer is the query id's field before them
        (building a message instead costs a parse of the summaries and a serialisation).
        """
        return b"".join(
            (
                wire.varint_field(_STREAMED_QUERY_ID_FIELD, query_id),
                # the summaries field's key and length, then the summaries
                wire.varint((_STREAMED_SUMMARIES_FIELD << 3) | 2),
                wire.varint(self.size),
                self.encoded,
            )
        )


class RegionNodeServicer(region_node_pb2_grpc.RegionNodeServiceServicer):
    def __init__(
        self,
        node: RegionNode,
        evaluator: Evaluator | None = None,
        stores: NodeStores | None = None,
        privacy: PrivateReleaser | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.node = node
        # the server's send limit: a summaries answer over it is refused on its own
        self.max_message_bytes = max_message_bytes
        self.started_ns = time.time_ns()
        self.evaluator = evaluator
        self.stores = stores
        # differential privacy for what leaves the region (None: exact summaries)
        self.privacy = privacy
        # identical queries between two changes of the store get the same response
        self._responses: dict[SummaryQuery, _CachedSummaries] = {}
        self._responses_bytes = 0  # their encoded sizes, summed
        # the running StreamSummaries calls: a coordinator keeps one open per node
        self._summary_streams: set[asyncio.Task[Any]] = set()
        # the running Ingest calls
        self._ingest_streams: set[asyncio.Task[Any]] = set()
        self._ending_streams = False
        #: whether the summaries RPCs answer bytes (set by :func:`add_to_server`, whose
        #: serialisers pass them through), else messages (any other registration)
        self.encoded_answers = False

    def end_streams(self) -> None:
        """The node is draining; long-lived streams would otherwise hold the stop for
        the whole grace period, then be cut with no word of what they applied.

        * StreamSummaries calls end with OK. The coordinator stopped sending queries
          when the node went NOT_SERVING; a query still waiting fails over as UNAVAILABLE.
        * Ingest calls still reading end after the message being applied with
          UNAVAILABLE (ErrorInfo reason ``NODE_DRAINING``, with ``applied_batches`` and
          ``applied_values`` as for a rejected message): the client sends the rest to
          another node. Those past their last message (making it durable, or reading
          what follows a rejected one) finish as they would have.
        """
        self._ending_streams = True
        for task in [*self._summary_streams, *self._ingest_streams]:
            task.cancel()

    @rpc_errors
    async def Ingest(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[region_node_pb2.IngestRequest], context: Context
    ) -> region_node_pb2.IngestResponse:
        batches = 0
        values = 0
        duplicates = 0
        logged = self.node.wal is not None
        if self._ending_streams:  # began after the drain ended the others: none taken
            raise _draining(0, 0, 0)
        task = asyncio.current_task()
        if task is not None:
            self._ingest_streams.add(task)
        try:
            try:
                # a message rejected here, or one that did not parse (the iterator raises)
                async for request in request_iterator:
                    batch = convert.ingest_batch_from_proto(request, self.node.clock())
                    raw = request.SerializeToString() if logged else None
                    if self.node.ingest(batch, raw):
                        batches += 1
                        values += int(batch.values.size)
                    else:
                        duplicates += 1
            except MeshError as exc:
                # read no more: a drain from now on lets it finish (a cancel in the sync
                # or the drain below would end it with no word of what it applied)
                self._ingest_streams.discard(task)
                exc.metadata = {
                    **exc.metadata,
                    "message_index": str(batches + duplicates),
                    "applied_batches": str(batches),
                    "applied_values": str(values),
                }
                await self.node.sync()  # what the error acknowledges is durable
                await _drain(request_iterator)
                raise
            except asyncio.CancelledError:
                if not self._ending_streams:
                    raise
                # ended by end_streams(): say what was applied, so nothing is sent twice
                await self.node.sync()
                await _drain(request_iterator)
                raise _draining(batches + duplicates, batches, values) from None
            self._ingest_streams.discard(task)  # all read: a drain lets it finish
            await self.node.sync()  # durable before the acknowledgement
        finally:
            self._ingest_streams.discard(task)
            telemetry.get_recorder().record_ingest(batches, values)
        return region_node_pb2.IngestResponse(
            accepted_batches=batches, accepted_values=values, duplicate_batches=duplicates
        )

    @rpc_errors
    async def GetSummaries(  # noqa: N802
        self, request: region_node_pb2.GetSummariesRequest, context: Context
    ) -> EncodedSummaries | region_node_pb2.GetSummariesResponse:
        # the cached bytes themselves: neither parsed here nor serialised again
        return self._sent(self._summaries(request).encoded, region_node_pb2.GetSummariesResponse)

    @rpc_stream_errors
    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[StreamAnswer]:
        if self._ending_streams:  # began after the drain ended the others: ends as they did
            return
        task = asyncio.current_task()
        if task is not None:
            self._summary_streams.add(task)
        try:
            async for answer in self._stream_summaries(request_iterator):
                yield answer
        except asyncio.CancelledError:
            if not self._ending_streams:
                raise
            # ended by end_streams(): finish with OK, so the server's stop need not wait
        finally:
            self._summary_streams.discard(task)

    async def _stream_summaries(
        self, request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest]
    ) -> AsyncIterator[StreamAnswer]:
        async for message in request_iterator:
            try:
                summaries = self._summaries(message.query)
            except MeshError as exc:
                yield region_node_pb2.StreamSummariesResponse(
                    query_id=message.query_id, error=convert.summary_query_error_to_proto(exc)
                )
                continue
            yield self._sent(
                summaries.stream_answer(message.query_id), region_node_pb2.StreamSummariesResponse
            )

    def _sent(self, encoded: bytes, message: type[_Message]) -> bytes | _Message:
        """An encoded answer as this servicer's registration sends it: the bytes as they
        are (:func:`add_to_server`), else parsed into ``message``."""
        return encoded if self.encoded_answers else message.FromString(encoded)

    def _summaries(self, request: region_node_pb2.GetSummariesRequest) -> _CachedSummaries:
        """What GetSummaries answers (``MeshError`` for a query it rejects)."""
        query = convert.summary_query_from_proto(request)
        data_version = self.node.version_for(query)
        # the data, the gaps, and the windows the range covers (the rollup horizon moves
        # with the clock): what the answer says changes with each
        version = (data_version, self.node.gaps_version, self.node.windows_for(query))
        cached = self._responses.get(query)
        if cached is not None and cached.version == version:
            cached.check_size(self.max_message_bytes)
            return cached
        groups = self.node.summaries(query)
        mean_errors: list[float] = [0.0] * len(groups)
        release = pending = None
        if self.privacy is not None:
            # noised before it leaves; a spent budget is RESOURCE_EXHAUSTED. A filtered
            # query is charged as its metrics' windows, whether the filter matches or not
            per_metric = self.node.summaries(
                dataclasses.replace(query, label_filter=(), group_by=())
            )
            unfiltered = (
                per_metric if query.label_filter and self.privacy.granularity == "metric" else None
            )
            # the query as the windows holding data bound it (public): a range reaching
            # further into empty windows is the same release, not a fresh one to pay for
            pending = self.privacy.prepare(
                _data_range(query, per_metric), groups, data_version, charged_as=unfiltered
            )
            release = pending.release
            groups = _public_times([r.group for r in release.groups], per_metric)
            mean_errors = [r.mean_error for r in release.groups]
        ident = self.node.identity
        # everything but the series as a message, the series straight to bytes before it
        # (field 1 first: the bytes a serialised message would be)
        head = region_node_pb2.GetSummariesResponse(
            region_id=ident.region_id,
            instance_id=ident.instance_id,
            scope=_scope(self.node),
            gaps=[convert.data_gap_to_proto(g) for g in self.node.gaps_for(query)],
        )
        if release is not None:
            head.privacy.CopyFrom(convert.privacy_info_to_proto(release.info))
        as_of = max((g.data_as_of_ns for g in groups), default=0)
        if as_of:
            head.data_as_of.CopyFrom(convert.ns_to_timestamp(as_of))
        series = convert.group_summaries_to_wire(_SERIES_FIELD, groups, mean_errors)
        entry = _CachedSummaries(version, series + head.SerializeToString(), len(groups))
        # an answer refused as too large is not kept, and with privacy spends no budget
        # (charged only when sent; the releaser keeps its noise, so asking again is
        # refused again)
        entry.check_size(self.max_message_bytes)
        if pending is not None and self.privacy is not None:
            self.privacy.commit(pending)
        self._keep(query, entry)
        return entry

    def _keep(self, query: SummaryQuery, entry: _CachedSummaries) -> None:
        """Cache an answer (all are dropped at once past the count or the bytes bound:
        they all go stale at the next ingest anyway)."""
        previous = self._responses.pop(query, None)
        if previous is not None:
            self._responses_bytes -= previous.size
        if (
            len(self._responses) >= _MAX_CACHED_RESPONSES
            or self._responses_bytes + entry.size > _MAX_CACHED_RESPONSE_BYTES
        ):
            self._responses.clear()
            self._responses_bytes = 0
        if entry.size <= _MAX_CACHED_RESPONSE_BYTES:
            self._responses[query] = entry
            self._responses_bytes += entry.size

    @rpc_errors
    async def GetNodeInfo(  # noqa: N802
        self, request: region_node_pb2.GetNodeInfoRequest, context: Context
    ) -> region_node_pb2.GetNodeInfoResponse:
        cfg = self.node.store.config
        ident = self.node.identity
        rolled = cfg.rollup_factor > 0
        self.node.apply_pending()
        return region_node_pb2.GetNodeInfoResponse(
            region_id=ident.region_id,
            instance_id=ident.instance_id,
            scope=_scope(self.node),
            window=convert.ns_to_duration(cfg.window_ns),
            retention=convert.ns_to_duration(cfg.retention_ns),
            # exact counts would reveal the groups the privacy noise hides: not reported
            series_count=self.node.store.series_count if self.privacy is None else 0,
            window_count=self.node.store.window_count if self.privacy is None else 0,
            histogram_scale=cfg.histogram_scale,
            version=__version__,
            components=self._components(),
            stores=[convert.store_status_to_proto(c) for c in self._stores().choices()]
            if self.stores is not None
            else [],
            model=convert.model_summary_to_proto(self.evaluator.model.summary())
            if self.evaluator is not None
            else None,
            started_at=convert.ns_to_timestamp(self.started_ns),
            rollup_after=convert.ns_to_duration(cfg.rollup_after_ns) if rolled else None,
            rollup_window=convert.ns_to_duration(cfg.rollup_window_ns) if rolled else None,
            gaps=[convert.data_gap_to_proto(g) for g in self.node.gaps_for(SummaryQuery())],
        )

    def _components(self) -> dict[str, str]:
        found = components()
        found["model"] = (
            self.evaluator.model.describe() if self.evaluator is not None else "disabled"
        )
        if self.evaluator is not None:
            pool = self.evaluator.detection_pool
            # batch counts grow with the actions evaluated: not told under privacy noise
            found["detection"] = (
                pool.describe(counts=self.privacy is None) if pool is not None else "in process"
            )
        if self.node.identity.region_scope:
            read = self.node.peers_read_ns
            found["peers"] = (
                "the region's other instances' windows, as they had flushed them by "
                f"{convert.utc_text(read)} (read after "
                "each flush of this instance)"
                if read is not None
                else "the region's other instances' windows: not read yet"
            )
        wal = self.node.wal
        if wal is not None:
            # its segments and size grow with the data ingested: like the series and
            # window counts, not told by a node that adds privacy noise
            described = wal.describe() if self.privacy is None else str(wal.directory)
            found["write_ahead_log"] = described + (
                "; trimmed by each flush to the time-series store"
                if self.stores is not None and self.stores.keeps_windows
                else "; the only copy of the windows' data (an in-memory time-series "
                "store): kept for the retention"
            )
        return found

    # -- governance -------------------------------------------------------------------

    def _evaluator(self) -> Evaluator:
        if self.evaluator is None:
            raise Unavailable(
                message="this node does not evaluate actions (no model loaded)",
                reason="EVALUATION_DISABLED",
            )
        return self.evaluator

    @rpc_errors
    async def Evaluate(  # noqa: N802
        self, request: region_node_pb2.EvaluateRequest, context: Context
    ) -> region_node_pb2.EvaluateResponse:
        evaluator = self._evaluator()
        parsed = convert.action_from_proto(request.action)
        outcome = await evaluator.evaluate(parsed)
        ident = self.node.identity
        return convert.evaluate_response_to_proto(outcome, ident.region_id, ident.instance_id)

    @rpc_stream_errors
    async def EvaluateStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.EvaluateStreamRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.EvaluateStreamResponse | bytes]:
        evaluator = self._evaluator()
        read_ahead = ReadAhead(_STREAM_READ_AHEAD_ACTIONS, stream_weight)
        # groups begun (parsed, their detection started in the node's workers) and not
        # yet finished: the next group is begun before the one before it is finished, so
        # the workers detect while this loop answers
        in_flight: deque[_StreamGroup] = deque()
        try:
            async for chunk in read_chunks(read_ahead.read(request_iterator), _STREAM_CHUNK):
                # messages that arrived together are evaluated together, in groups of up to
                # _STREAM_GROUP_ACTIONS actions; answers keep the order of the messages, and
                # nothing stays begun across chunks (no waiting on the caller's next message)
                group: list[region_node_pb2.EvaluateStreamRequest] = []
                size = 0
                for message in chunk:
                    n = stream_weight(message)
                    if group and size + n > _STREAM_GROUP_ACTIONS:
                        in_flight.append(self._begin_stream_group(evaluator, group, size))
                        group, size = [], 0
                        if len(in_flight) > 1:
                            for answer in await self._finish_stream_group(evaluator, in_flight[0]):
                                yield answer
                            read_ahead.release(in_flight.popleft().size)
                    group.append(message)
                    size += n
                in_flight.append(self._begin_stream_group(evaluator, group, size))
                while in_flight:
                    for answer in await self._finish_stream_group(evaluator, in_flight[0]):
                        yield answer
                    read_ahead.release(in_flight.popleft().size)
        finally:
            for begun in in_flight:  # the stream ended early: the workers' answers are dropped
                for batch in begun.batches:
                    batch.cancel()

    def _begin_stream_group(
        self,
        evaluator: Evaluator,
        messages: Sequence[region_node_pb2.EvaluateStreamRequest],
        size: int,
    ) -> _StreamGroup:
        """Parse a group of EvaluateStream messages and begin evaluating its valid actions
        (a batch message's as soon as it is parsed)."""
        # per message: its answer when known before evaluating (a malformed message, a
        # bad single action), None for a single action to evaluate, or a batch's parsed
        # actions and action errors
        plans: list[_StreamPlan] = []
        batches: list[PendingBatch] = []
        checks: list[tuple[int, int]] = []
        singles: list[EvaluationRequest] = []  # single actions not yet begun
        ident = self.node.identity
        for message in messages:
            problem = convert.stream_message_problem(message)
            if problem is not None:
                plans.append(convert.stream_message_error_to_proto(problem))
            elif message.HasField("action"):
                try:
                    singles.append(convert.action_from_proto(message.action))
                except MeshError as exc:
                    plans.append(
                        region_node_pb2.EvaluateStreamResponse(
                            error=convert.action_error_to_proto(message.action.request_id, exc)
                        )
                    )
                else:
                    plans.append(None)
            else:
                batch = convert.batch_actions_from_proto(message.actions)
                if singles:  # begun in message order, so outcomes come back in it
                    batches.append(evaluator.begin(singles, in_workers=False))
                    singles = []
                requests = [r for r in batch if isinstance(r, EvaluationRequest)]
                bound = convert.batch_answer_bound(
                    batch, requests, None, ident.region_id, ident.instance_id
                )
                if bound > self.max_message_bytes:  # may not fit: see _refuse_unfitting
                    checks.append((len(plans), len(batches)))
                batches.append(evaluator.begin(requests))
                plans.append(batch)
        if singles:
            # one action a message: the messages cost more than the detection, and a
            # worker's round trip would only delay the answers
            batches.append(evaluator.begin(singles, in_workers=False))
        return _StreamGroup(plans, batches, size, checks)

    async def _finish_stream_group(
        self, evaluator: Evaluator, group: _StreamGroup
    ) -> list[region_node_pb2.EvaluateStreamResponse | bytes]:
        """One answer per message of a begun group, in order; all of its valid actions
        are evaluated as one batch (:meth:`Evaluator.finish`)."""
        plans, batches = group.plans, group.batches
        if group.checks:
            plans, batches = await self._refuse_unfitting(group)
        outcomes = iter(await evaluator.finish(batches))
        ident = self.node.identity
        region_id, instance_id = ident.region_id, ident.instance_id
        answers: list[region_node_pb2.EvaluateStreamResponse | bytes] = []
        for plan in plans:
            if plan is None:
                answers.append(
                    convert.stream_evaluation_to_proto(next(outcomes), region_id, instance_id)
                )
            elif isinstance(plan, list):
                results = [next(outcomes) if isinstance(r, EvaluationRequest) else r for r in plan]
                answers.append(
                    self._sent(
                        convert.stream_results_encoded(results, region_id, instance_id),
                        region_node_pb2.EvaluateStreamResponse,
                    )
                )
            else:
                answers.append(plan)
        return answers

    async def _refuse_unfitting(
        self, group: _StreamGroup
    ) -> tuple[list[_StreamPlan], list[PendingBatch]]:
        """The group's plans and batches less its batch messages whose answer would not
        fit in a message (gRPC would fail the stream, after their evaluations were
        recorded): each of those is answered by its error, and nothing of it is evaluated.

        The answers' sizes hang on the findings, so the batches to check are detected
        first (their workers' findings awaited, or detected here), and go on to be
        evaluated with those findings (not detected again)."""
        plans, batches = list(group.plans), list(group.batches)
        ident = self.node.identity
        refused: set[int] = set()
        for p, b in group.checks:
            plan, pending = plans[p], batches[b]
            assert isinstance(plan, list)
            findings, detected = await pending.detected()
            size = convert.batch_answer_bound(
                plan, pending.requests, findings, ident.region_id, ident.instance_id
            )
            if size > self.max_message_bytes:
                pending.cancel()
                refused.add(b)
                plans[p] = convert.stream_message_error_to_proto(
                    batch_too_large(len(plan), size, self.max_message_bytes)
                )
            else:
                batches[b] = detected
        return plans, [batch for i, batch in enumerate(batches) if i not in refused]

    @rpc_errors
    async def Score(  # noqa: N802
        self, request: region_node_pb2.ScoreRequest, context: Context
    ) -> region_node_pb2.ScoreResponse:
        evaluator = self._evaluator()
        started = time.perf_counter_ns()
        rows = convert.score_rows_from_proto(request, evaluator.model.feature_width)
        probabilities = await evaluator.model.probabilities(rows)
        return region_node_pb2.ScoreResponse(
            probabilities=probabilities.tolist(),
            model=evaluator.model.label(),
            latency=convert.ns_to_duration(time.perf_counter_ns() - started),
        )

    @rpc_errors
    async def GetRiskProfile(  # noqa: N802
        self, request: region_node_pb2.GetRiskProfileRequest, context: Context
    ) -> region_node_pb2.GetRiskProfileResponse:
        evaluator = self._evaluator()
        agent = request.agent_id
        # as Evaluate refuses it: no such agent can have a profile
        if (bad := convert.agent_id_violation("agent_id", agent)) is not None:
            raise InvalidArgument.single(bad.field, bad.description)
        profile = await evaluator.profile(agent)
        if profile is None:
            raise NotFound(
                message=f"no evaluations of agent {quoted(agent)} on this node",
                reason="AGENT_NOT_FOUND",
            )
        return convert.profile_to_proto(profile)

    # -- in-region stores (raw data: never called by the coordinator) -----------------

    def _stores(self) -> NodeStores:
        if self.stores is None:
            raise Unavailable(message="this node has no stores", reason="STORES_DISABLED")
        return self.stores

    @rpc_errors
    async def QueryMetrics(  # noqa: N802
        self, request: region_node_pb2.QueryMetricsRequest, context: Context
    ) -> region_node_pb2.QueryMetricsResponse:
        q = convert.metrics_query_from_proto(request)
        rows = await store_call(
            self._stores().timeseries.query_metrics(
                agent_id=q.agent_id,
                metric_name=q.metric,
                start_time=q.start,
                end_time=q.end,
                limit=q.limit,
            )
        )
        response = region_node_pb2.QueryMetricsResponse(
            records=[convert.metric_record_to_proto(r) for r in rows]
        )
        return self._fitting(response, f"{len(rows)} rows", "a lower limit, a shorter range")

    @rpc_errors
    async def AggregateMetrics(  # noqa: N802
        self, request: region_node_pb2.AggregateMetricsRequest, context: Context
    ) -> region_node_pb2.AggregateMetricsResponse:
        q = convert.aggregate_query_from_proto(request)
        rows = await store_call(
            self._stores().timeseries.aggregate_metrics(
                q.metric,
                aggregation=q.aggregation,
                time_bucket=q.bucket,
                start_time=q.start,
                end_time=q.end,
                agent_id=q.agent_id,
            )
        )
        response = convert.aggregate_rows_to_proto(rows)
        return self._fitting(response, f"{len(rows)} buckets", "wider buckets, a shorter range")

    @rpc_errors
    async def SearchAudit(  # noqa: N802
        self, request: region_node_pb2.SearchAuditRequest, context: Context
    ) -> region_node_pb2.SearchAuditResponse:
        query = convert.audit_query_from_proto(request)
        audit = self._stores().audit
        while True:
            page = await store_call(audit.search(query), field="page_token")
            response = convert.audit_page_to_proto(page)
            size = response.ByteSize()
            n = len(page.records)
            if size + _STREAM_FRAMING_BYTES <= self.max_message_bytes or n <= 1:
                break
            # records of long texts: a shorter page, whose token goes on from its last
            # record (a token does not hold the page size)
            fits = (self.max_message_bytes - _STREAM_FRAMING_BYTES) * n // size
            query = dataclasses.replace(query, page_size=max(1, min(n - 1, fits)))
        return self._fitting(response, "1 record", "a shorter action text or intent")

    def _fitting(self, response: _Message, holds: str, narrower: str) -> _Message:
        """``response``, or ANSWER_TOO_LARGE when it would not fit in a message."""
        size = response.ByteSize()
        if size + _STREAM_FRAMING_BYTES > self.max_message_bytes:
            raise answer_too_large(holds, size, self.max_message_bytes, narrower)
        return response


T = TypeVar("T")
_Message = TypeVar("_Message", bound=Message)


def batch_too_large(actions: int, size: int, limit: int) -> ResourceExhausted:
    """The error answering a batch message whose answer could take ``size`` bytes, over
    this node's ``limit``-byte messages: gRPC would fail the whole stream."""
    return ResourceExhausted(
        message=(
            f"the answer to this batch of {actions} actions could take {size:,} bytes "
            f"encoded, over this node's {limit:,}-byte message limit; nothing of it was "
            "evaluated: send its actions in smaller batches, or raise --max-message-bytes "
            "on the node and on its callers"
        ),
        reason="ANSWER_TOO_LARGE",
    )


def answer_too_large(holds: str, size: int, limit: int, narrower: str) -> ResourceExhausted:
    """The error for an answer of ``size`` bytes (holding ``holds``) that would not fit in
    this node's ``limit``-byte messages: gRPC would fail the call with no advice."""
    return ResourceExhausted(
        message=(
            f"the answer holds {holds}, {size:,} bytes encoded, over this node's "
            f"{limit:,}-byte message limit; narrow the query ({narrower}) or raise "
            "--max-message-bytes on the node and on its callers"
        ),
        reason="ANSWER_TOO_LARGE",
        metadata={"answer_bytes": str(size), "max_message_bytes": str(limit)},
    )


#: How long a rejected Ingest stream keeps reading (and dropping) what the client still
#: sends before it answers with the error.
INGEST_DRAIN_S: Final = 1.0


def _data_range(query: SummaryQuery, per_metric: Sequence[GroupSummary]) -> SummaryQuery:
    """``query`` with its time range cut to the windows where its metrics hold data."""
    if not per_metric:
        return query
    start = min(g.start_ns for g in per_metric)
    end = max(g.end_ns for g in per_metric)
    return dataclasses.replace(query, start_ns=start, end_ns=end)


def _public_times(
    groups: Sequence[GroupSummary], per_metric: Sequence[GroupSummary]
) -> list[GroupSummary]:
    """Released groups with only public times: each group's range is its metric's (the
    windows where the metric has data, public by the privacy model), and no "data as of"
    time. A group's own range, or its newest observation's time, would tell whether one
    more observation fell in a later window."""
    ranges = {g.metric: (g.start_ns, g.end_ns) for g in per_metric}
    out = []
    for g in groups:
        start, end = ranges.get(g.metric, (g.start_ns, g.end_ns))
        out.append(dataclasses.replace(g, start_ns=start, end_ns=end, data_as_of_ns=0))
    return out


def _draining(taken: int, batches: int, values: int) -> Unavailable:
    """An Ingest stream's end by the node's drain, after ``taken`` messages (``batches``
    of them applied, holding ``values`` values)."""
    return Unavailable(
        message=(
            "the node is stopping; the stream's messages before message_index were taken "
            "(applied, or known duplicates): send the rest to another node"
        ),
        reason="NODE_DRAINING",
        metadata={
            "message_index": str(taken),
            "applied_batches": str(batches),
            "applied_values": str(values),
        },
    )


async def _drain(requests: AsyncIterator[object]) -> None:
    """Read and drop the rest of a rejected stream, for at most :data:`INGEST_DRAIN_S`.

    A client still writing when the error arrives can lose it: grpc's client marks the
    call INTERNAL ("Internal error from Core") when a write meets the finished call, and
    the status with the applied counts is gone (seen with 20 concurrent clients, in
    about one rejected stream in ten). Once the client has sent everything, its writes
    are over and it reads the error whole. Nothing read here is applied.
    """
    with contextlib.suppress(Exception):  # the bound, a broken call: the first error stands
        async with asyncio.timeout(INGEST_DRAIN_S):
            while True:
                try:
                    async for _ in requests:
                        pass
                    return
                except UnparsableRequest:
                    continue  # a later bad message: read on past it (the first error stands)


async def store_call(call: Awaitable[T], field: str = "request") -> T:
    """Await a store call; its ValueError (bad input it found) is INVALID_ARGUMENT, a
    store that cannot be reached (or fails) UNAVAILABLE, never INTERNAL."""
    try:
        return await call
    except ValueError as exc:
        raise InvalidArgument.single(field, described(field, exc)) from None
    except (ConnectionError, AuditStoreError) as exc:
        raise Unavailable(message=str(exc), reason="STORE_UNAVAILABLE") from None


_STREAM_CHUNK = 256
# at most this many actions go to one evaluate_many call (a batch message is never split)
_STREAM_GROUP_ACTIONS = 1024
# actions an EvaluateStream reads ahead of its answers
_STREAM_READ_AHEAD_ACTIONS = 4 * convert.MAX_STREAM_BATCH_ACTIONS


#: What a stream message is answered with (see ``_begin_stream_group``)
_StreamPlan = (
    region_node_pb2.EvaluateStreamResponse
    | list[EvaluationRequest | governance_pb2.ActionError]
    | None
)


@dataclasses.dataclass(frozen=True, slots=True)
class _StreamGroup:
    """EvaluateStream messages parsed and begun: per message its plan (see
    ``_begin_stream_group``), the batches begun, the actions the group counts for, and
    the batch messages whose answer may not fit in a message (their indexes in ``plans``
    and in ``batches``, see ``_refuse_unfitting``)."""

    plans: list[_StreamPlan]
    batches: list[PendingBatch]
    size: int
    checks: list[tuple[int, int]]


def stream_weight(message: region_node_pb2.EvaluateStreamRequest) -> int:
    """The actions a stream message counts for (one for a message with no batch)."""
    return len(message.actions) or 1


def _scope(node: RegionNode) -> region_node_pb2.DataScope:
    if node.identity.region_scope:
        return region_node_pb2.DATA_SCOPE_REGION
    return region_node_pb2.DATA_SCOPE_INSTANCE
