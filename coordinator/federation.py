"""Fan-out to every region in parallel, merge the summaries exactly, report coverage."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import grpc

from coordinator.instances import (
    CREDENTIAL_CODES,
    Health,
    InstanceRegistry,
    RegionInstance,
    warn_credentials_refused,
)
from coordinator.summary_stream import SummaryCallError
from nethical_grpc import convert, telemetry
from nethical_grpc.errors import FieldViolation, InvalidArgument
from nethical_grpc.privacy import MergedError, ReleaseInfo, merged_error
from nethical_grpc.proto_limits import FIRST_TIMESTAMP_NS, LAST_TIMESTAMP_NS
from nethical_grpc.series import DataGap, GroupSummary, Labels, SummaryQuery
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import region_node_pb2
from nethical_grpc.validation import MAX_NAMES, check_count, keyed_path, quoted

log = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
DEFAULT_REGION_TIMEOUT_S = 2.0
#: A region of replicas (each holds the whole region): the share of the region timeout
#: a try gets before the next replica is asked as well (see Federation._ask_one_replica)
HEDGE_FRACTION = 0.5
#: During a drain: how long before the server's stop a query stops waiting for regions
#: (time to merge and send the partial answer)
STOP_MARGIN_S = 0.1
MAX_REGION_TIMEOUT_S = 60.0
#: A replica's refusals every replica would give too: about the query (INVALID_ARGUMENT,
#: OUT_OF_RANGE) or the coordinator's credentials. Any other failure is that replica's
#: own (down, at its call limit, an internal error, an answer the coordinator refused),
#: so the region's next replica is asked.
SAME_ON_EVERY_REPLICA: Final = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, *CREDENTIAL_CODES}
)


class Missing(enum.Enum):
    UNHEALTHY = "unhealthy"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    ERROR = "error"
    INVALID_RESPONSE = "invalid_response"
    # answered, without part of its data (the node named a gap)
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class MissingPart:
    region_id: str
    instance_id: str
    reason: Missing
    message: str
    # the status the instance's call ended with, when it ended with one
    code: grpc.StatusCode | None = None


@dataclass(slots=True)
class Coverage:
    regions_requested: list[str]
    regions_answered: list[str] = field(default_factory=list)
    missing: list[MissingPart] = field(default_factory=list)
    instances_queried: int = 0
    instances_answered: int = 0
    oldest_data_as_of_ns: int = 0

    @property
    def complete(self) -> bool:
        return not self.missing and len(self.regions_answered) == len(self.regions_requested)


@dataclass(slots=True)
class GlobalQuery:
    query: SummaryQuery
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    regions: tuple[str, ...] = ()
    region_weights: Mapping[str, float] = field(default_factory=dict)
    include_breakdown: bool = False
    region_timeout_s: float = DEFAULT_REGION_TIMEOUT_S


@dataclass(slots=True)
class GroupResult:
    metric: str
    labels: Labels
    summary: Summary
    per_region: dict[str, Summary]
    weighted_mean: float | None
    # regions whose summaries of this group were noised, with how: one release per
    # answering instance (a region of disjoint instances merges one noisy summary each)
    noised: dict[str, list[ReleaseInfo]] = field(default_factory=dict)

    def privacy(self) -> MergedError | None:
        """The noise in the merged figures, when any region's summary was noised."""
        if not self.noised:
            return None
        releases = [info for infos in self.noised.values() for info in infos]
        return merged_error(releases, self.summary.count, self.summary.mean)


@dataclass(slots=True)
class GlobalResult:
    groups: list[GroupResult]
    coverage: Coverage
    computed_at_ns: int


@dataclass(slots=True)
class _Answer:
    instance: RegionInstance
    groups: list[GroupSummary]
    data_as_of_ns: int
    privacy: ReleaseInfo | None = None
    # the node says its summaries cover the whole region (a --region-scope replica)
    region_scope: bool = False
    # data the node keeps but left out of its answer
    gaps: tuple[DataGap, ...] = ()
    # the id the node reported ("" when it reports none)
    node_id: str = ""


@dataclass(slots=True)
class _Progress:
    """What a region's query has so far: what a drain keeps of a region it stops waiting
    for (see Federation._until_stop)."""

    # answers of the region's instances of their own data
    answered: list[_Answer] = field(default_factory=list)
    # instances of their own data asked and not answered yet
    waiting: list[RegionInstance] = field(default_factory=list)
    # a replica's answer naming gaps, kept while another replica may answer whole
    partial: _Answer | None = None


#: Why a region or instance a drain stopped waiting for is missing.
STOPPING_TEXT: Final = "the coordinator is stopping: no answer before its drain ended"


class _Summaries(Protocol):
    """What the merge takes of an instance's answer."""

    @property
    def groups(self) -> Sequence[GroupSummary]: ...

    @property
    def privacy(self) -> ReleaseInfo | None: ...

    @property
    def data_as_of_ns(self) -> int: ...

    @property
    def gaps(self) -> Sequence[DataGap]: ...


def _result(
    per_region: Mapping[str, Sequence[tuple[str, _Summaries]]],
    coverage: Coverage,
    weights: Mapping[str, float],
    include_breakdown: bool,
) -> GlobalResult:
    """The merged answer of ``per_region`` (each region's answering instances, by name,
    with what each answered; an empty list: the region did not answer), with the regions
    that answered, the gaps they named and the oldest of their data added to
    ``coverage``."""
    answered: dict[str, list[_Summaries]] = {}
    for region, named in per_region.items():
        if named:
            answered[region] = [a for _, a in named]
            coverage.regions_answered.append(region)
        coverage.missing += [
            MissingPart(region, name, Missing.INCOMPLETE, _gap_text(g.reason, g.message))
            for name, a in named
            for g in a.gaps
        ]
    as_of = [a.data_as_of_ns for rs in answered.values() for a in rs if a.data_as_of_ns]
    coverage.oldest_data_as_of_ns = min(as_of, default=0)
    return GlobalResult(
        groups=_merge(answered, weights, include_breakdown),
        coverage=coverage,
        computed_at_ns=time.time_ns(),
    )


def one_node_result(region_id: str, answer: convert.SummariesAnswer) -> GlobalResult:
    """What a coordinator of this one region node alone would answer: its summaries
    merged as its region's, with the coverage of its region and instance (``nethical-mesh
    query --node``).

    Raises ``ValueError`` when the node's summaries are invalid (a coordinator counts such
    a node missing)."""
    if answer.invalid is not None:
        raise ValueError(f"the node's summaries are invalid: {answer.invalid}")
    bad_as_of = _as_of_problem(answer.data_as_of_ns)
    if bad_as_of:
        raise ValueError(f"the node's answer is invalid: {bad_as_of}")
    coverage = Coverage(regions_requested=[region_id], instances_queried=1, instances_answered=1)
    named = [(answer.instance_id or region_id, answer)]
    return _result({region_id: named}, coverage, {}, include_breakdown=False)


def check_region_timeout(timeout_s: float) -> None:
    if not (0 < timeout_s <= MAX_REGION_TIMEOUT_S):
        raise InvalidArgument.single(
            "region_timeout", f"must be in (0, {MAX_REGION_TIMEOUT_S:g}] seconds"
        )


class SummaryTransport(enum.Enum):
    """How the coordinator asks region nodes for summaries."""

    #: ``stream`` unless traces are on, then ``unary`` (one span per region query, with
    #: the node's server span under it)
    AUTO = "auto"
    #: one long-lived ``StreamSummaries`` stream per instance (cheapest)
    STREAM = "stream"
    #: one ``GetSummaries`` call per region query
    UNARY = "unary"


class Federation:
    """Global queries over the registry's regions."""

    def __init__(
        self, registry: InstanceRegistry, transport: SummaryTransport = SummaryTransport.AUTO
    ) -> None:
        self.registry = registry
        self.transport = transport
        # which replica each region-scope region asks first, in turn (a counter per
        # region: one shared by all gave a region the same replica every time when the
        # number of such regions and of its replicas had a common factor)
        self._rr: collections.defaultdict[str, itertools.count[int]] = collections.defaultdict(
            itertools.count
        )
        # the coordinator is draining: queries answer (partially) before this moment
        self._stop_at: float | None = None
        # one future per query waiting for its regions, resolved early by stop_by
        self._stop_waiters: set[asyncio.Future[None]] = set()
        # (region, node id, address kept, address dropped) already logged as one node
        self._duplicates_logged: set[tuple[str, ...]] = set()

    def stop_by(self, deadline: float) -> None:
        """The server cancels the calls still running at ``deadline`` (time.monotonic):
        queries in flight stop waiting for regions a little before it and answer with the
        regions that did answer (the others missing, DEADLINE_EXCEEDED)."""
        self._stop_at = deadline if self._stop_at is None else min(self._stop_at, deadline)
        for waiter in self._stop_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _streamed(self) -> bool:
        if self.transport is SummaryTransport.AUTO:
            # traces want a span per region call; metrics alone are recorded per query
            # on either transport (record_region_query)
            active = telemetry.active_telemetry()
            return active is None or not active.tracing
        return self.transport is SummaryTransport.STREAM

    def validate(self, q: GlobalQuery) -> None:
        check_count("regions", q.regions, MAX_NAMES)
        check_count("region_weights", q.region_weights, MAX_NAMES)
        known = set(self.registry.region_ids)
        violations: list[FieldViolation] = []
        first: dict[str, int] = {}  # each region's first index in q.regions
        for i, r in enumerate(q.regions):
            if r not in known:
                violations.append(FieldViolation(f"regions[{i}]", f"unknown region {quoted(r)}"))
            elif r in first:
                # asked twice, it would be queried and merged twice
                violations.append(
                    FieldViolation(
                        f"regions[{i}]", f"{quoted(r)} is a duplicate of regions[{first[r]}]"
                    )
                )
            else:
                first[r] = i
        for region, weight in sorted(q.region_weights.items()):
            if region not in known:
                violations.append(
                    FieldViolation(
                        keyed_path("region_weights", region), f"unknown region {quoted(region)}"
                    )
                )
            elif not math.isfinite(weight) or weight < 0:
                violations.append(
                    FieldViolation(keyed_path("region_weights", region), "must be finite and >= 0")
                )
        if violations:
            raise InvalidArgument(
                message="; ".join(f"{v.field}: {v.description}" for v in violations[:3]),
                field_violations=violations,
                metadata={"known_regions": ",".join(sorted(known))},
            )

    async def global_metrics(self, q: GlobalQuery) -> GlobalResult:
        self.validate(q)
        check_region_timeout(q.region_timeout_s)
        regions = list(q.regions) if q.regions else self.registry.region_ids
        coverage = Coverage(regions_requested=regions)
        request = convert.summary_query_to_proto(q.query)
        streamed = self._streamed()
        by_region = self.registry.by_region()
        progress = [_Progress() for _ in regions]
        answers = await self._until_stop(
            regions,
            [
                asyncio.ensure_future(
                    self._query_region(
                        r, by_region.get(r, []), request, q.region_timeout_s, coverage, streamed, p
                    )
                )
                for r, p in zip(regions, progress, strict=True)
            ],
            coverage,
            progress,
        )
        per_region = {
            region: [(a.instance.name, a) for a in region_answers]
            for region, region_answers in zip(regions, answers, strict=True)
        }
        result = _result(per_region, coverage, q.region_weights, q.include_breakdown)
        recorder = telemetry.get_recorder()
        recorder.record_coverage(len(coverage.regions_requested), len(coverage.regions_answered))
        recorder.record_coverage(
            coverage.instances_queried, coverage.instances_answered, level="instance"
        )
        return result

    async def _until_stop(
        self,
        regions: list[str],
        tasks: list[asyncio.Task[list[_Answer]]],
        coverage: Coverage,
        progress: list[_Progress],
    ) -> list[list[_Answer]]:
        """Every region's answers; during a drain, what answered before the stop (the
        regions still waiting then are cancelled: what their instances answered is kept,
        and the instances still waiting are reported missing)."""
        pending: set[asyncio.Task[list[_Answer]]] = set(tasks)
        try:
            if pending and self._stop_at is None:
                # one future, resolved by the last region's end or by stop_by: waiting
                # costs a callback per region, not a wait over the rest at each answer
                wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                unanswered = len(pending)

                def one_done(_: object) -> None:
                    nonlocal unanswered
                    unanswered -= 1
                    if unanswered == 0 and not wake.done():
                        wake.set_result(None)

                for task in pending:
                    task.add_done_callback(one_done)
                self._stop_waiters.add(wake)
                try:
                    await wake
                finally:
                    self._stop_waiters.discard(wake)
                    for task in pending:
                        task.remove_done_callback(one_done)
                pending = {t for t in pending if not t.done()}
            if pending and self._stop_at is not None:
                left = self._stop_at - STOP_MARGIN_S - time.monotonic()
                if left > 0:
                    _, pending = await asyncio.wait(pending, timeout=left)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        answers: list[list[_Answer]] = []
        for region, task, got in zip(regions, tasks, progress, strict=True):
            if task.cancelled():
                answers.append(self._stopped(region, got, coverage))
            else:
                answers.append(task.result())
        return answers

    def _stopped(self, region: str, got: _Progress, coverage: Coverage) -> list[_Answer]:
        """The answers of a region a drain stopped waiting for: what its instances had
        answered (a replica's answer naming gaps, or those of the instances of their own
        data), the instances still waiting reported missing."""
        if got.partial is not None:
            return self._whole_region(region, got.partial, coverage, counted=1)
        coverage.missing += [
            MissingPart(
                region,
                inst.name,
                Missing.DEADLINE_EXCEEDED,
                STOPPING_TEXT,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            for inst in got.waiting
        ]
        if not got.waiting and not got.answered:  # a region of replicas, none answered
            coverage.missing.append(
                MissingPart(
                    region,
                    "",
                    Missing.DEADLINE_EXCEEDED,
                    STOPPING_TEXT,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            )
        # no time left to ask who started when: answers under one id are one node's
        return self._count_distinct(region, got.answered, {}, coverage)

    async def _query_region(
        self,
        region: str,
        instances: list[RegionInstance],
        request: region_node_pb2.GetSummariesRequest,
        timeout_s: float,
        coverage: Coverage,
        streamed: bool,
        progress: _Progress,
    ) -> list[_Answer]:
        if not instances:  # e.g. a DNS name that has not resolved to anything yet
            coverage.missing.append(
                MissingPart(region, "", Missing.UNHEALTHY, "no instance of the region is known")
            )
            return []
        usable = [i for i in instances if i.health in (Health.SERVING, Health.UNKNOWN)]
        for inst in instances:
            if inst not in usable:
                coverage.missing.append(
                    MissingPart(
                        region, inst.name, Missing.UNHEALTHY, f"instance is {inst.health.value}"
                    )
                )
        # the instances skipped as unhealthy count as queried on every path (the field's
        # meaning: those asked plus those skipped)
        coverage.instances_queried += len(instances) - len(usable)
        if not usable:
            return []
        shared = [i for i in usable if i.region_scope]
        if shared:
            return await self._ask_one_replica(
                region, shared, request, timeout_s, coverage, streamed, progress
            )
        # instances hold disjoint data (as far as the coordinator knows): every one of
        # them must answer
        coverage.instances_queried += len(usable)
        calls: list[asyncio.Future[tuple[RegionInstance, _Answer | MissingPart]]] = []
        results: Iterable[Awaitable[tuple[RegionInstance, _Answer | MissingPart]]]
        deadline = time.monotonic() + timeout_s
        progress.waiting = list(usable)
        if len(usable) == 1:  # the usual region: its one instance asked in this task
            results = [self._asked(usable[0], request, timeout_s, streamed)]
        else:
            calls = [
                asyncio.ensure_future(self._asked(i, request, timeout_s, streamed)) for i in usable
            ]
            results = asyncio.as_completed(calls)
        try:
            for next_done in results:
                inst, res = await next_done
                progress.waiting.remove(inst)
                if not isinstance(res, _Answer):
                    coverage.missing.append(res)
                elif res.region_scope:
                    # it holds the whole region (its scope was not known yet, e.g. right
                    # after the coordinator started): the other instances are replicas,
                    # and merging their answers would count the region again
                    return self._whole_region(region, res, coverage, counted=len(usable))
                else:
                    progress.answered.append(res)
        finally:
            for call in calls:
                call.cancel()
        started = await self._started_at(_shared_ids(progress.answered), deadline)
        return self._count_distinct(region, progress.answered, started, coverage)

    async def _asked(
        self,
        inst: RegionInstance,
        request: region_node_pb2.GetSummariesRequest,
        timeout_s: float,
        streamed: bool,
    ) -> tuple[RegionInstance, _Answer | MissingPart]:
        return inst, await self._call(inst, request, timeout_s, streamed)

    def _count_distinct(
        self,
        region: str,
        answers: list[_Answer],
        started: Mapping[str, int | None],
        coverage: Coverage,
    ) -> list[_Answer]:
        """``answers`` with one answer per node, counted in ``coverage``: a node listed at
        two addresses (a host name resolving to 127.0.0.1 and ::1, say) answers at each,
        and its data would be merged twice. Answers that report the same id are one
        node's when the node says it started at the same moment at each address
        (``started``: ``GetNodeInfo.started_at`` by address, see :meth:`_started_at`);
        two nodes that share an id (the default REGION-PORT, on two hosts) start at
        different moments, and both are merged. When an address did not say, answers
        under one id are taken as one node's. Sorted by address; of one node's answers
        the first is kept."""
        ordered = sorted(answers, key=lambda a: a.instance.endpoint)
        by_id: dict[str, list[_Answer]] = {}
        for answer in ordered:
            if answer.node_id:
                by_id.setdefault(answer.node_id, []).append(answer)
        moment: dict[str, int | None] = {}
        for node_id, same in by_id.items():
            moments = [started.get(a.instance.endpoint) for a in same]
            if len(same) > 1 and None not in moments:
                if len(set(moments)) > 1:
                    self._warn_shared_id(region, node_id, same)
                moment.update(zip((a.instance.endpoint for a in same), moments, strict=True))
        kept: dict[tuple[str, int | None], _Answer] = {}
        distinct: list[_Answer] = []
        for answer in ordered:
            if not answer.node_id:
                distinct.append(answer)
                continue
            key = (answer.node_id, moment.get(answer.instance.endpoint))
            first = kept.setdefault(key, answer)
            if first is answer:
                distinct.append(answer)
            else:
                self._warn_duplicate(region, answer.node_id, first, answer)
        # a node that answered at two addresses is one instance queried, and answered
        coverage.instances_queried -= len(answers) - len(distinct)
        coverage.instances_answered += len(distinct)
        return distinct

    @staticmethod
    async def _started_at(answers: list[_Answer], deadline: float) -> dict[str, int | None]:
        """When the node at each answer's address started (``GetNodeInfo.started_at``,
        Unix ns), by address; None where it did not say in time or reports another id."""

        async def one(answer: _Answer) -> int | None:
            left = deadline - time.monotonic()
            if left <= 0 or answer.instance.removed:  # a removed one's channel is closed
                return None
            try:
                info = await answer.instance.stub.GetNodeInfo(
                    region_node_pb2.GetNodeInfoRequest(), timeout=left
                )
            except grpc.aio.AioRpcError:
                return None
            if info.instance_id != answer.node_id or not info.HasField("started_at"):
                return None
            return convert.timestamp_to_ns(info.started_at)

        found = await asyncio.gather(*(one(a) for a in answers))
        return {a.instance.endpoint: t for a, t in zip(answers, found, strict=True)}

    def _first_time(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` (a warning about duplicate answers) was not logged yet (the
        keys remembered are bounded)."""
        if key in self._duplicates_logged:
            return False
        if len(self._duplicates_logged) >= 1024:
            self._duplicates_logged.clear()
        self._duplicates_logged.add(key)
        return True

    def _warn_shared_id(self, region: str, node_id: str, answers: list[_Answer]) -> None:
        endpoints = tuple(a.instance.endpoint for a in answers)
        if self._first_time((region, node_id, "shared id", ",".join(endpoints))):
            log.warning(
                "region %s: the nodes at %s all call themselves %s (started at different "
                "moments: different nodes): each is merged; give each its own --instance-id",
                region,
                ", ".join(endpoints),
                node_id,
            )

    def _warn_duplicate(self, region: str, node_id: str, kept: _Answer, dropped: _Answer) -> None:
        if self._first_time((region, node_id, kept.instance.endpoint, dropped.instance.endpoint)):
            log.warning(
                "region %s: node %s answered at %s and at %s (one node listed twice): its data "
                "is merged once, from %s",
                region,
                node_id,
                kept.instance.endpoint,
                dropped.instance.endpoint,
                kept.instance.endpoint,
            )

    async def _ask_one_replica(
        self,
        region: str,
        replicas: list[RegionInstance],
        request: region_node_pb2.GetSummariesRequest,
        timeout_s: float,
        coverage: Coverage,
        streamed: bool,
        progress: _Progress,
    ) -> list[_Answer]:
        """The region's answer from one of ``replicas`` (each holds the whole region).

        Round robin over the replicas the balancer has not ejected (ejected ones last).
        A try that fails is followed by the next replica at once, unless its status is
        one every replica would give (:data:`SAME_ON_EVERY_REPLICA`); a try still
        unanswered after ``HEDGE_FRACTION`` of the region timeout (a hung node) is
        followed by the next replica too, and the first answer wins: the other try is
        cancelled, never merged. Each try is reported to the balancer; one cancelled past
        its bound counts as a timeout (a failure), so a hung replica is ejected after
        the balancer's ``ejection_threshold`` of them and no longer asked first. An
        answer that names gaps (a replica still restoring, say) is kept while the next
        replica is asked at once: a whole answer from it within ``HEDGE_FRACTION`` of the
        timeout wins, else the kept one is the region's (coverage names its gaps).
        """
        loop = asyncio.get_running_loop()
        balancer = self.registry.balancer
        start = next(self._rr[region]) % len(replicas)
        rotated = replicas[start:] + replicas[:start]
        available = [i for i in rotated if balancer.is_available(i.inst)]
        waiting = available + [i for i in rotated if i not in available]
        waiting.reverse()  # popped from the end
        deadline = loop.time() + timeout_s
        # a try's own bound: the next replica is asked after it (the try goes on)
        per_try_s = timeout_s * HEDGE_FRACTION if len(replicas) > 1 else timeout_s
        tries: dict[asyncio.Task[_Answer | MissingPart], RegionInstance] = {}

        def ask_next() -> float:
            while waiting and waiting[-1].removed:  # gone from the registry meanwhile
                waiting.pop()
            if not waiting:
                return deadline
            inst = waiting.pop()
            tries[
                asyncio.ensure_future(
                    self._try(inst, request, deadline - loop.time(), streamed, per_try_s)
                )
            ] = inst
            return loop.time() + per_try_s

        last: MissingPart | None = None
        # an answer that names gaps, kept while another replica may answer whole
        partial: _Answer | None = None
        coverage.instances_queried += 1
        hedge_at = ask_next()
        try:
            while tries:
                wake = min(hedge_at, deadline) if waiting else deadline
                done, _ = await asyncio.wait(
                    tries, timeout=max(0.0, wake - loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    del tries[task]
                    found = task.result()
                    if isinstance(found, _Answer):
                        if not found.region_scope:
                            found = _own_data_only(found)
                        if not found.gaps:
                            return self._whole_region(region, found, coverage, counted=1)
                        if partial is None:
                            partial = progress.partial = found
                            # a whole answer is waited for this long at most
                            deadline = min(deadline, loop.time() + per_try_s)
                            hedge_at = loop.time()  # the next replica, at once
                        continue
                    last = found
                    if found.code in SAME_ON_EVERY_REPLICA:
                        waiting.clear()  # the others would refuse it too: no more tries
                if loop.time() >= deadline:
                    break
                if waiting and (not tries or loop.time() >= hedge_at):
                    hedge_at = ask_next()
        finally:
            for task in tries:
                task.cancel()
            if tries:
                await asyncio.wait(tries)  # reported to the balancer as they end
        if partial is not None:
            return self._whole_region(region, partial, coverage, counted=1)
        if tries:  # still running at the region deadline
            last = MissingPart(
                region,
                next(iter(tries.values())).name,
                Missing.DEADLINE_EXCEEDED,
                f"DEADLINE_EXCEEDED: no answer within {timeout_s:g} s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if last is None:  # every replica left the registry before one could be asked
            last = MissingPart(
                region,
                "",
                Missing.UNAVAILABLE,
                "UNAVAILABLE: every instance of the region was removed before it was asked",
            )
        coverage.missing.append(last)
        return []

    async def _try(
        self,
        inst: RegionInstance,
        request: region_node_pb2.GetSummariesRequest,
        timeout_s: float,
        streamed: bool,
        bound_s: float,
    ) -> _Answer | MissingPart:
        """One try at ``inst``, reported to the balancer (``bound_s``: the try's own
        bound; cancelled past it, the try counts as a timeout)."""
        balancer = self.registry.balancer
        started = time.monotonic()
        calls = balancer.begin(inst.inst)
        try:
            found = await self._call(inst, request, timeout_s, streamed)
        except asyncio.CancelledError:
            if time.monotonic() - started >= bound_s:
                no_answer = TimeoutError("no answer within its bound")
                balancer.record_failure(inst.inst, no_answer, budget_s=bound_s, calls=calls)
            else:
                balancer.record_cancelled(inst.inst, calls=calls)
            raise
        except BaseException:
            balancer.record_cancelled(inst.inst, calls=calls)
            raise
        if isinstance(found, _Answer):
            balancer.record_success(inst.inst, time.monotonic() - started, calls=calls)
        elif found.code is not None:
            balancer.record_failure(inst.inst, found.code, budget_s=timeout_s, calls=calls)
        else:  # an answer the coordinator refused: the node's fault
            balancer.record_failure(inst.inst, calls=calls)
        return found

    @staticmethod
    def _whole_region(
        region: str, answer: _Answer, coverage: Coverage, counted: int
    ) -> list[_Answer]:
        """``answer`` is the region's, from one replica: one instance queried (``counted``
        were counted when asked) and answered, and the replicas listed as unhealthy are
        missing nothing."""
        coverage.instances_queried += 1 - counted
        coverage.instances_answered += 1
        coverage.missing = [m for m in coverage.missing if m.region_id != region]
        return [answer]

    async def _call(
        self,
        inst: RegionInstance,
        request: region_node_pb2.GetSummariesRequest,
        timeout_s: float,
        streamed: bool,
    ) -> _Answer | MissingPart:
        started = time.perf_counter()
        found = await self._ask(inst, request, timeout_s, streamed)
        outcome = "ok" if isinstance(found, _Answer) else found.reason.value
        telemetry.get_recorder().record_region_query(
            inst.region_id, time.perf_counter() - started, outcome
        )
        return found

    async def _ask(
        self,
        inst: RegionInstance,
        request: region_node_pb2.GetSummariesRequest,
        timeout_s: float,
        streamed: bool,
    ) -> _Answer | MissingPart:
        if inst.removed:  # its channel is closed: asking would open one nothing closes
            return MissingPart(
                inst.region_id, inst.name, Missing.UNAVAILABLE, "UNAVAILABLE: instance removed"
            )
        try:
            if streamed:
                answer = convert.summaries_answer_from_bytes(
                    await inst.summary_stream.query(request, timeout_s)
                )
            else:
                answer = convert.summaries_answer_from_proto(
                    await inst.stub.GetSummaries(request, timeout=timeout_s)
                )
        except grpc.aio.AioRpcError as err:
            return _missing(inst, err.code(), err.details() or "")
        except SummaryCallError as err:
            return _missing(inst, err.code, err.details)
        if answer.region_id and answer.region_id != inst.region_id:
            # a node listed under the wrong region: its data would count there (and, were
            # it listed under its own too, twice)
            text = (
                f"the node at {inst.endpoint} serves region {answer.region_id!r}, not "
                f"{inst.region_id!r}: its data is left out (check the coordinator's --region)"
            )
            if self._first_time((inst.region_id, answer.region_id, "wrong region", inst.endpoint)):
                log.warning("%s", text)
            return MissingPart(inst.region_id, inst.name, Missing.INVALID_RESPONSE, _clipped(text))
        inst.learn(answer.instance_id, answer.scope)
        invalid = answer.invalid
        if invalid is None:
            invalid = _as_of_problem(answer.data_as_of_ns) or None
        if invalid is not None:
            log.warning("invalid summaries from %s: %s", inst.endpoint, invalid)
            return MissingPart(
                inst.region_id, inst.name, Missing.INVALID_RESPONSE, _clipped(invalid)
            )
        return _Answer(
            inst,
            answer.groups,
            answer.data_as_of_ns,
            answer.privacy,
            region_scope=answer.scope == region_node_pb2.DATA_SCOPE_REGION,
            gaps=answer.gaps,
            node_id=answer.instance_id,
        )


def _as_of_problem(as_of_ns: int) -> str:
    """Why a node's ``data_as_of`` is not a time a Timestamp holds ('' when it is, or
    when unset): the coverage repeats the oldest one, and its staleness, which were
    out of range (a Duration past 2**63 s failed the whole query)."""
    if as_of_ns and not FIRST_TIMESTAMP_NS <= as_of_ns <= LAST_TIMESTAMP_NS:
        return f"data_as_of {as_of_ns} ns is not between years 0001 and 9999"
    return ""


def _shared_ids(answers: list[_Answer]) -> list[_Answer]:
    """The answers that report an id another of ``answers`` reports too."""
    ids = collections.Counter(a.node_id for a in answers if a.node_id)
    return [a for a in answers if ids[a.node_id] > 1]


def _own_data_only(answer: _Answer) -> _Answer:
    """An answer a replica gave for its own data only (it says so: restarted without
    ``--region-scope``, say), taken as the region's answer only when no replica gives a
    whole one, and then named in the coverage."""
    gap = DataGap(
        "INSTANCE_SCOPE",
        None,
        None,
        "this instance answered for its own data only, not the region's (started without "
        "--region-scope?): the other instances' data is left out",
    )
    return dataclasses.replace(answer, gaps=(*answer.gaps, gap))


#: The most of a node's text (a gap's, a refusal's) that a coverage repeats: a node's
#: words, several MB long in a stream's answer, would not make the answer too large to send.
MAX_GAP_TEXT: Final = 1000


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_GAP_TEXT else text[: MAX_GAP_TEXT - 1] + "…"


def _gap_text(reason: str, message: str) -> str:
    return _clipped(f"{reason}: {message}" if message else reason)


def _missing(inst: RegionInstance, code: grpc.StatusCode, details: str) -> MissingPart:
    if code in CREDENTIAL_CODES:
        # about the coordinator's own token or certificate: its log has the node's words
        warn_credentials_refused(inst.name, code, details)
        details = "the node refused the coordinator's credentials"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        reason = Missing.DEADLINE_EXCEEDED
    elif code == grpc.StatusCode.UNAVAILABLE:
        reason = Missing.UNAVAILABLE
    else:
        reason = Missing.ERROR
    return MissingPart(inst.region_id, inst.name, reason, _clipped(f"{code.name}: {details}"), code)


def _merge(
    per_region: Mapping[str, Sequence[_Summaries]],
    weights: Mapping[str, float],
    include_breakdown: bool,
) -> list[GroupResult]:
    # group -> region -> the summaries its instances sent
    by_group: dict[tuple[str, Labels], dict[str, list[Summary]]] = {}
    noised: dict[tuple[str, Labels], dict[str, list[ReleaseInfo]]] = {}
    for region, answers in per_region.items():
        for answer in answers:
            for g in answer.groups:
                by_group.setdefault((g.metric, g.labels), {}).setdefault(region, []).append(
                    g.summary
                )
                if answer.privacy is not None:
                    releases = noised.setdefault((g.metric, g.labels), {})
                    releases.setdefault(region, []).append(answer.privacy)
    results: list[GroupResult] = []
    for metric, labels in sorted(by_group):
        regions = by_group[(metric, labels)]
        everything = [s for r in sorted(regions) for s in regions[r]]
        per_region_summary = (
            {r: Summary.merge_all(regions[r]) for r in sorted(regions)}
            if include_breakdown or weights
            else {}
        )
        results.append(
            GroupResult(
                metric=metric,
                labels=labels,
                summary=Summary.merge_all(everything),
                per_region=per_region_summary if include_breakdown else {},
                weighted_mean=_weighted_mean(per_region_summary, weights),
                noised=noised.get((metric, labels), {}),
            )
        )
    return results


def _weighted_mean(regions: Mapping[str, Summary], weights: Mapping[str, float]) -> float | None:
    if not weights:
        return None
    pairs = [(weights.get(r, 0.0), s.mean) for r, s in regions.items() if s.count > 0]
    top = max((w for w, _ in pairs), default=0.0)
    if top <= 0:
        return None
    # weights relative to the largest: any finite weights (1e308 each, say) sum finitely
    relative = [(w / top, m) for w, m in pairs]
    return math.fsum(w * m for w, m in relative) / math.fsum(w for w, _ in relative)
