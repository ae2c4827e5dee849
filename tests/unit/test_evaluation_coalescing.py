"""Concurrent single evaluations are coalesced into batches, each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.model_info import ModelSummary
from nethical_grpc.series import SummaryQuery
from region_node.evaluation import MAX_COALESCED, RISK_METRIC, Evaluator
from region_node.model import ModelConfig, NodeModel
from region_node.node import NodeIdentity, RegionNode

BENIGN = "SELECT title FROM books WHERE id = 42"
HARMFUL = "DROP TABLE users; rm -rf / --no-preserve-root"


def request(text: str, i: int) -> EvaluationRequest:
    return EvaluationRequest(
        Action(f"agent-{i % 7}", text, "query", "look it up"), f"req-{i}", "query"
    )


@pytest.fixture
def node() -> RegionNode:
    return RegionNode(NodeIdentity("r1", "r1-a"))


@pytest.fixture
def model() -> NodeModel:
    return NodeModel.load(ModelConfig(device="cpu"))


def evaluated_count(node: RegionNode) -> int:
    groups = node.summaries(SummaryQuery(metrics=frozenset({RISK_METRIC})))
    return sum(g.summary.moments.count for g in groups)


async def test_concurrent_calls_share_batches_and_get_their_own_answers(
    node: RegionNode, model: NodeModel
) -> None:
    evaluator = Evaluator(model, node)
    texts = [HARMFUL if i % 4 == 0 else f"{BENIGN} -- call {i}" for i in range(300)]
    requests = [request(t, i) for i, t in enumerate(texts)]
    outcomes = await asyncio.gather(*(evaluator.evaluate(r) for r in requests))

    # fewer batches than calls, and none larger than the bound
    assert evaluator.coalesced_batches < len(requests)
    assert evaluator.coalesced_batches >= -(-len(requests) // MAX_COALESCED)
    # every caller got the outcome of its own request, the same as evaluating it alone
    # (up to the rounding of the model's matrix products, which depends on the batch size)
    single = Evaluator(model, RegionNode(NodeIdentity("r2", "r2-a")))
    alone = [(await single.evaluate_many([r]))[0] for r in requests]
    for req, got, ref in zip(requests, outcomes, alone, strict=True):
        assert got.request is req
        assert got.evaluation.decision == ref.evaluation.decision
        assert got.evaluation.violations == ref.evaluation.violations
        assert got.model_probability == pytest.approx(ref.model_probability, abs=1e-6)
        assert got.evaluation.risk_score == pytest.approx(ref.evaluation.risk_score, abs=1e-6)
        assert got.latency_ns > 0
    assert {o.evaluation.decision for o in outcomes[::4]} != {
        o.evaluation.decision for o in outcomes[1::4]
    }
    # and the windows counted each evaluation once
    assert evaluated_count(node) == len(requests) == evaluator.evaluated


async def test_a_caller_that_goes_away_is_not_evaluated(node: RegionNode, model: NodeModel) -> None:
    evaluator = Evaluator(model, node)
    tasks = [asyncio.ensure_future(evaluator.evaluate(request(BENIGN, i))) for i in range(5)]
    await asyncio.sleep(0)  # every call is waiting for the batch
    tasks[2].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [o.request.request_id for o in done if not isinstance(o, BaseException)] == [
        "req-0",
        "req-1",
        "req-3",
        "req-4",
    ]
    assert evaluator.evaluated == 4 == evaluated_count(node)


class FailsOnMarker:
    """The evaluator's model protocol over the real model, failing any batch holding a
    marked text (the way a broken model file fails a call)."""

    def __init__(self, inner: NodeModel) -> None:
        self.inner = inner

    @property
    def feature_width(self) -> int:
        return self.inner.feature_width

    def describe(self) -> str:
        return self.inner.describe()

    def label(self) -> str:
        return self.inner.label()

    def summary(self) -> ModelSummary:
        return self.inner.summary()

    def features(self, actions: Sequence[Action]) -> npt.NDArray[np.float32]:
        if any("MARKER" in a.action_text for a in actions):
            raise RuntimeError("the model failed on this batch")
        return self.inner.features(actions)

    async def probabilities(
        self, rows: npt.NDArray[np.float32], *, batched: bool = False
    ) -> npt.NDArray[np.float64]:
        return await self.inner.probabilities(rows, batched=batched)

    async def probabilities_apart(self, rows: npt.NDArray[np.float32]) -> list[float | Exception]:
        return await self.inner.probabilities_apart(rows)


async def test_a_failed_batch_fails_its_callers_only(node: RegionNode, model: NodeModel) -> None:
    evaluator = Evaluator(FailsOnMarker(model), node)
    first = await asyncio.gather(
        evaluator.evaluate(request("MARKER " + BENIGN, 0)),
        evaluator.evaluate(request(BENIGN, 1)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) for r in first)  # they shared the batch
    assert evaluator.evaluated == 0 == evaluated_count(node)
    # the evaluator goes on: later calls are answered
    later = await asyncio.gather(*(evaluator.evaluate(request(BENIGN, i)) for i in range(3)))
    assert [o.request.request_id for o in later] == ["req-0", "req-1", "req-2"]
    assert evaluator.evaluated == 3 == evaluated_count(node)


async def test_a_lone_call_is_answered_promptly(node: RegionNode, model: NodeModel) -> None:
    evaluator = Evaluator(model, node)
    # a hang bound, not a timing figure: the coalescer must not wait for company forever
    outcome = await asyncio.wait_for(evaluator.evaluate(request(BENIGN, 0)), timeout=5)
    assert outcome.request.request_id == "req-0"
    assert evaluator.coalesced_batches == 1


async def test_the_wait_for_company_shrinks_for_lone_calls_and_returns_under_load(
    node: RegionNode, model: NodeModel
) -> None:
    from region_node.evaluation import COALESCE_MIN_TURNS, COALESCE_QUIET_TURNS

    evaluator = Evaluator(model, node)
    for i in range(8):  # one call at a time: every batch holds one call
        await evaluator.evaluate(request(BENIGN, i))
    assert evaluator._quiet_turns == COALESCE_MIN_TURNS
    await asyncio.gather(*(evaluator.evaluate(request(BENIGN, i)) for i in range(20)))
    assert evaluator._quiet_turns == COALESCE_QUIET_TURNS  # a batch of several: full wait
    assert evaluator.evaluated == 28 == evaluated_count(node)


async def _arrive_spaced(
    evaluator: Evaluator, n: int, *, turns: int = 0, seconds: float = 0.0, first: int = 0
) -> list[Outcome]:
    """``n`` calls, each ``turns`` loop turns (or ``seconds``) after the one before, the way
    callers whose answers just went out send their next calls: their outcomes, in order."""
    tasks = []
    for i in range(first, first + n):
        tasks.append(asyncio.ensure_future(evaluator.evaluate(request(BENIGN, i))))
        for _ in range(turns):
            await asyncio.sleep(0)
        if seconds:
            await asyncio.sleep(seconds)
    return list(await asyncio.gather(*tasks))


async def _after_a_batch_of(
    n: int, node: RegionNode, model: NodeModel, max_wait_ns: int
) -> Evaluator:
    """An evaluator whose last batch took ``n`` concurrent calls."""
    evaluator = Evaluator(model, node, coalesce_max_wait_ns=max_wait_ns)
    await asyncio.gather(*(evaluator.evaluate(request(BENIGN, i)) for i in range(n)))
    assert evaluator.coalesced_batches == 1
    assert evaluator._expected == n
    return evaluator


async def test_a_batch_waits_for_as_many_calls_as_the_last_one_took(
    node: RegionNode, model: NodeModel
) -> None:
    from region_node.evaluation import COALESCE_QUIET_TURNS

    # a bound far off, so only the expected company ends the wait here
    evaluator = await _after_a_batch_of(6, node, model, max_wait_ns=60_000_000_000)
    # six calls spaced by more quiet turns than a batch waits for: the quiet-turn rule
    # alone would evaluate them one by one; waiting for six makes them one batch
    outcomes = await _arrive_spaced(evaluator, 6, turns=COALESCE_QUIET_TURNS + 4)
    assert evaluator.coalesced_batches == 2
    assert [o.request.request_id for o in outcomes] == [f"req-{i}" for i in range(6)]
    assert evaluator.evaluated == 12 == evaluated_count(node)


async def test_a_batch_cut_short_by_the_bound_lowers_the_next_wait(
    node: RegionNode, model: NodeModel
) -> None:
    evaluator = await _after_a_batch_of(8, node, model, max_wait_ns=20_000_000)
    # the callers went away but one: it waits for company at most the bound (a hang
    # bound here, not a timing figure), and the next batch expects one call
    lone = await asyncio.wait_for(evaluator.evaluate(request(BENIGN, 99)), timeout=5)
    assert lone.request.request_id == "req-99"
    assert evaluator._expected == 1
    assert evaluator.coalesced_batches == 2
    # so spaced single calls are no longer held for each other
    await _arrive_spaced(evaluator, 3, turns=40)
    assert evaluator.coalesced_batches == 5


async def test_the_wait_for_expected_calls_wakes_at_each_arrival(
    node: RegionNode, model: NodeModel
) -> None:
    # the bound is a minute away: only arrivals can end this wait within the hang bound
    evaluator = await _after_a_batch_of(4, node, model, max_wait_ns=60_000_000_000)
    # real time between arrivals, not loop turns
    spaced = _arrive_spaced(evaluator, 4, seconds=0.01, first=10)
    outcomes = await asyncio.wait_for(spaced, timeout=5)
    assert [o.request.request_id for o in outcomes] == [f"req-{10 + i}" for i in range(4)]
    assert evaluator.coalesced_batches == 2
    assert evaluator._arrival is None  # nothing left waiting on an arrival


async def test_unary_calls_do_not_wait_for_the_stores_but_bulk_batches_do(
    node: RegionNode, model: NodeModel
) -> None:
    # the stores fall behind: admission holds every caller that asks until it is opened
    opened = asyncio.Event()
    asked = 0

    async def admission() -> None:
        nonlocal asked
        asked += 1
        await opened.wait()

    evaluator = Evaluator(model, node, admission=admission)
    bulk = asyncio.ensure_future(evaluator.evaluate_many([request(BENIGN, i) for i in range(8)]))
    unary = await asyncio.wait_for(
        asyncio.gather(*(evaluator.evaluate(request(HARMFUL, i)) for i in range(5))), 5.0
    )
    assert [o.request.request_id for o in unary] == [f"req-{i}" for i in range(5)]
    assert asked == 1 and not bulk.done()  # only the bulk batch asked, and it still waits
    opened.set()
    assert len(await asyncio.wait_for(bulk, 5.0)) == 8
    assert evaluated_count(node) == 13


class HeldModel(FailsOnMarker):
    """The real model behind a gate: its answer waits until the test opens it, the way a
    batch waits for the GPU's worker thread (the awaits of the GPU path)."""

    def __init__(self, inner: NodeModel) -> None:
        super().__init__(inner)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def _held(self) -> None:
        self.entered.set()
        await self.gate.wait()

    async def probabilities(
        self, rows: npt.NDArray[np.float32], *, batched: bool = False
    ) -> npt.NDArray[np.float64]:
        await self._held()
        return await self.inner.probabilities(rows, batched=batched)

    async def probabilities_apart(self, rows: npt.NDArray[np.float32]) -> list[float | Exception]:
        await self._held()
        return await self.inner.probabilities_apart(rows)


def held_evaluator(node: RegionNode, model: NodeModel) -> tuple[HeldModel, Evaluator, list[str]]:
    """An evaluator whose model waits for the test's gate, and the request ids it sends
    to its audit sink."""
    held = HeldModel(model)
    audited: list[str] = []
    evaluator = Evaluator(
        held, node, sink=lambda outs: audited.extend(o.request.request_id for o in outs)
    )
    return held, evaluator, audited


async def test_a_caller_gone_while_its_batch_waits_for_the_model_is_not_recorded(
    node: RegionNode, model: NodeModel
) -> None:
    held, evaluator, audited = held_evaluator(node, model)
    tasks = [asyncio.ensure_future(evaluator.evaluate(request(BENIGN, i))) for i in range(3)]
    await asyncio.wait_for(held.entered.wait(), 5.0)  # one batch, waiting for the model
    assert evaluator.coalesced_batches == 1
    tasks[1].cancel()  # its deadline passed, or its client cancelled
    await asyncio.sleep(0)
    held.gate.set()
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [o.request.request_id for o in done if isinstance(o, Outcome)] == ["req-0", "req-2"]
    # nothing of the cancelled call is recorded: windows, counter, audit sink, profile
    assert evaluator.evaluated == 2 == evaluated_count(node)
    assert audited == ["req-0", "req-2"]
    assert evaluator.profiles.get("agent-1") is None
    assert evaluator.profiles.get("agent-0") is not None


async def test_a_batch_whose_callers_all_went_away_records_nothing(
    node: RegionNode, model: NodeModel
) -> None:
    held, evaluator, audited = held_evaluator(node, model)
    tasks = [asyncio.ensure_future(evaluator.evaluate(request(BENIGN, i))) for i in range(2)]
    await asyncio.wait_for(held.entered.wait(), 5.0)
    for task in tasks:
        task.cancel()
    await asyncio.sleep(0)
    held.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(d, asyncio.CancelledError) for d in done)
    # the coalescer goes on: a later call is answered, and it alone is recorded
    later = await asyncio.wait_for(evaluator.evaluate(request(BENIGN, 5)), 5.0)
    assert later.request.request_id == "req-5"
    assert evaluator.evaluated == 1 == evaluated_count(node)
    assert audited == ["req-5"]


async def test_a_coalescer_cancelled_before_its_first_step_is_started_again(
    node: RegionNode, model: NodeModel
) -> None:
    """A coalescer task cancelled before it ever ran never ran its ``finally`` (which
    clears it): the next call starts a new one instead of waiting on the dead one."""
    evaluator = Evaluator(model, node)
    first = asyncio.ensure_future(evaluator.evaluate(request(BENIGN, 0)))
    await asyncio.sleep(0)  # the call is waiting; its coalescer is created, not yet run
    coalescer = evaluator._coalescer
    assert coalescer is not None
    coalescer.cancel()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert coalescer.done()
    outcome = await asyncio.wait_for(evaluator.evaluate(request(BENIGN, 1)), 10)
    assert outcome.request.request_id == "req-1"
