"""EvaluateStream messages that carry a batch of actions, on a real region node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

import grpc
import pytest
from meshutil import Mesh, add_region
from test_evaluate import BENIGN, HARMFUL, action, counts_by_decision, evaluate, stub

from nethical_grpc.streams import ReadAhead
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc
from region_node.servicer import stream_weight

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
MAX_BATCH = 4096


def texts(n: int) -> list[str]:
    """A mix of benign and harmful actions (every third is harmful)."""
    return [HARMFUL if i % 3 == 0 else BENIGN for i in range(n)]


def batch(
    items: Sequence[str], prefix: str = "b", agent: str = "agent-1"
) -> region_node_pb2.EvaluateStreamRequest:
    return region_node_pb2.EvaluateStreamRequest(
        actions=[
            action(t, agent=agent, request_id=f"{prefix}-{i}", action_type=_type(t))
            for i, t in enumerate(items)
        ]
    )


def _type(text: str) -> str:
    return "command" if text == HARMFUL else "query"


async def stream(
    s: region_node_pb2_grpc.RegionNodeServiceStub,
    messages: Iterable[region_node_pb2.EvaluateStreamRequest],
) -> list[region_node_pb2.EvaluateStreamResponse]:
    return [a async for a in s.EvaluateStream(iter(list(messages)), timeout=60)]


def assert_same_verdict(
    got: governance_pb2.ActionEvaluation, want: governance_pb2.ActionEvaluation
) -> None:
    """Equal but for the request id and the latency. The model's float32 sums may differ
    in the last bits with the size of the batch it ran in (as Score vs Evaluate), so the
    numbers that depend on the model are compared to 1e-6, the rest exactly."""
    assert got.decision == want.decision
    assert got.rule_risk == want.rule_risk
    assert (got.region_id, got.instance_id) == (want.region_id, want.instance_id)
    assert [(v.type, v.severity, v.confidence, v.message, v.rule_id) for v in got.violations] == [
        (v.type, v.severity, v.confidence, v.message, v.rule_id) for v in want.violations
    ]
    for name in ("risk_score", "confidence", "model_probability"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), abs=1e-6), name


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


async def test_a_batch_is_answered_in_order_as_if_evaluated_one_by_one(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    s = stub(mesh)
    items = texts(300)
    answers = await stream(s, [batch(items)])
    assert len(answers) == 1
    answer = answers[0]
    assert answer.WhichOneof("result") is None  # a batch is answered by results only
    assert len(answer.results) == len(items)
    assert all(r.WhichOneof("result") == "evaluation" for r in answer.results)
    assert [r.evaluation.request_id for r in answer.results] == [
        f"b-{i}" for i in range(len(items))
    ]
    assert all(r.evaluation.latency.ToNanoseconds() > 0 for r in answer.results)
    # the same actions one by one, unary, give the same verdicts
    for i, text in enumerate(items[:12]):
        alone = await evaluate(s, action(text, request_id=f"b-{i}", action_type=_type(text)))
        assert alone.request_id == answer.results[i].evaluation.request_id
        assert_same_verdict(answer.results[i].evaluation, alone)
    harmful = [r.evaluation.decision != governance_pb2.DECISION_ALLOW for r in answer.results]
    assert harmful == [t == HARMFUL for t in items]


async def test_single_and_batch_messages_mix_on_one_stream(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    s = stub(mesh)
    messages = [
        region_node_pb2.EvaluateStreamRequest(action=action(BENIGN, request_id="one-0")),
        batch(texts(5), prefix="first"),
        region_node_pb2.EvaluateStreamRequest(action=action("", request_id="one-1")),
        batch(texts(1), prefix="second"),
        region_node_pb2.EvaluateStreamRequest(action=action(HARMFUL, request_id="one-2")),
    ]
    answers = await stream(s, messages)
    assert len(answers) == len(messages)
    assert answers[0].evaluation.request_id == "one-0"
    assert [r.evaluation.request_id for r in answers[1].results] == [f"first-{i}" for i in range(5)]
    assert answers[2].WhichOneof("result") == "error"
    assert answers[2].error.request_id == "one-1"
    assert [f.field for f in answers[2].error.field_errors] == ["action.action_text"]
    assert [r.evaluation.request_id for r in answers[3].results] == ["second-0"]
    assert answers[4].evaluation.request_id == "one-2"
    assert answers[4].evaluation.decision != governance_pb2.DECISION_ALLOW
    assert total(await counts_by_decision(s)) == 1 + 5 + 1 + 1


async def test_a_bad_action_in_a_batch_gets_its_error_and_the_rest_are_evaluated(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "r1")
    s = stub(mesh)
    items = texts(9)
    message = batch(items)
    message.actions[4].action_text = "   "
    message.actions[4].agent_id = ""
    message.actions[6].action_type = "Not A Type!"
    answers = await stream(s, [message])
    assert len(answers) == 1
    results = answers[0].results
    assert len(results) == len(items)
    for i, r in enumerate(results):
        if i in (4, 6):
            assert r.WhichOneof("result") == "error"
            assert r.error.request_id == f"b-{i}"
            assert r.error.code == INVALID
            assert "Traceback" not in r.error.message
        else:
            assert r.WhichOneof("result") == "evaluation"
            assert r.evaluation.request_id == f"b-{i}"
    assert sorted(f.field for f in results[4].error.field_errors) == [
        "actions[4].action_text",
        "actions[4].agent_id",
    ]
    assert [f.field for f in results[6].error.field_errors] == ["actions[6].action_type"]
    # nothing of the bad actions leaks into the good ones' verdicts
    clean = await stream(s, [batch([t for i, t in enumerate(items) if i not in (4, 6)])])
    good = [r.evaluation for i, r in enumerate(results) if i not in (4, 6)]
    assert len(good) == len(clean[0].results)
    for got, want in zip(good, clean[0].results, strict=True):
        assert_same_verdict(got, want.evaluation)
    assert total(await counts_by_decision(s)) == 2 * (len(items) - 2)


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ("both", "actions"),
        ("neither", "action"),
        ("too many", "actions"),
    ],
)
async def test_a_malformed_message_gets_an_error_and_the_stream_goes_on(
    mesh: Mesh, shape: str, field: str
) -> None:
    await add_region(mesh, "r1")
    s = stub(mesh)
    if shape == "both":
        bad = batch(texts(3), prefix="x")
        bad.action.CopyFrom(action(BENIGN, request_id="x-single"))
    elif shape == "neither":
        bad = region_node_pb2.EvaluateStreamRequest()
    else:
        bad = batch([BENIGN] * (MAX_BATCH + 1), prefix="x")
    messages = [
        batch(texts(2), prefix="before"),
        bad,
        batch(texts(3), prefix="after"),
        region_node_pb2.EvaluateStreamRequest(action=action(BENIGN, request_id="last")),
    ]
    answers = await stream(s, messages)
    assert len(answers) == len(messages)
    assert [r.evaluation.request_id for r in answers[0].results] == ["before-0", "before-1"]
    error = answers[1]
    assert error.WhichOneof("result") == "error"
    assert len(error.results) == 0
    assert error.error.code == INVALID
    assert error.error.message.startswith("malformed stream message")
    assert [f.field for f in error.error.field_errors] == [field]
    assert [r.evaluation.request_id for r in answers[2].results] == [
        "after-0",
        "after-1",
        "after-2",
    ]
    assert answers[3].evaluation.request_id == "last"
    # none of the malformed message was evaluated
    assert total(await counts_by_decision(s)) == 2 + 3 + 1


async def test_largest_batches_are_accepted_past_the_read_ahead_bound(mesh: Mesh) -> None:
    # five full batches: more actions than the node reads ahead of its answers
    await add_region(mesh, "r1")
    s = stub(mesh)
    messages = [batch([BENIGN] * MAX_BATCH, prefix=f"m{k}") for k in range(5)]
    answers = await stream(s, messages)
    assert [len(a.results) for a in answers] == [MAX_BATCH] * 5
    assert [a.results[-1].evaluation.request_id for a in answers] == [
        f"m{k}-{MAX_BATCH - 1}" for k in range(5)
    ]
    assert total(await counts_by_decision(s)) == 5 * MAX_BATCH


async def test_a_batch_whose_caller_went_away_records_nothing(mesh: Mesh) -> None:
    """The deadline passes while the node works on a full batch (scoring it, or between
    its chunks): it stops there, so no verdict nobody received is counted in the windows,
    the audit trail or the agent's profile; a retry counts once.

    The deadline is a fraction of the time the same batch took just before (tens of
    milliseconds, depending on the machine). On a busy machine that batch may have been
    slow and this one quick: a batch recorded whole while its answer missed the deadline
    is in doubt, as any call can be, and a shorter deadline is tried (never a part of a
    batch recorded)."""
    await add_region(mesh, "r1")
    s = stub(mesh)
    await stream(s, [batch(texts(4), prefix="warm")])  # kernels and model warm
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stream(s, [batch(texts(MAX_BATCH), agent="a-timed")])
    took = loop.time() - started
    before = total(await counts_by_decision(s))
    assert before == 4 + MAX_BATCH
    for fraction in (0.35, 0.2, 0.1, 0.05):
        agent = f"a-gone-{fraction}"
        message = batch(texts(MAX_BATCH), agent=agent)
        code = grpc.StatusCode.OK
        try:
            async for _ in s.EvaluateStream(iter([message]), timeout=fraction * took):
                pass
        except grpc.aio.AioRpcError as err:
            code = err.code()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)
        await asyncio.sleep(max(0.5, 2 * took))  # whatever the node would still do, is done
        after = total(await counts_by_decision(s))
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and after == before:
            break
        assert after == before + MAX_BATCH  # answered, or in doubt: recorded whole
        before = after
    else:
        pytest.fail(f"no deadline of {took:.3f} s x 0.05-0.35 passed before the batch ended")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await s.GetRiskProfile(region_node_pb2.GetRiskProfileRequest(agent_id=agent))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    # the retry, with time enough, is counted once
    answers = await stream(s, [message])
    assert len(answers[0].results) == MAX_BATCH
    assert total(await counts_by_decision(s)) == before + MAX_BATCH


async def test_windows_and_profiles_count_every_evaluated_action_of_a_batch(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    s = stub(mesh)
    await stream(s, [batch(texts(4), prefix="warm")])
    before = await counts_by_decision(s)
    message = batch(texts(40), agent="a-batch")
    message.actions[7].action_text = ""  # one bad action: not counted
    answers = await stream(s, [message])
    evaluated = [r for r in answers[0].results if r.WhichOneof("result") == "evaluation"]
    assert len(evaluated) == 39
    after = await counts_by_decision(s)
    assert total(after) - total(before) == 39
    harmful = sum(1 for r in evaluated if r.evaluation.decision != governance_pb2.DECISION_ALLOW)
    assert after.get("ALLOW/query", 0) - before.get("ALLOW/query", 0) == 39 - harmful
    latency = await s.GetSummaries(
        region_node_pb2.GetSummariesRequest(metrics=["latency_ms"]), timeout=5
    )
    assert sum(x.summary.moments.count for x in latency.series) == 4 + 39
    profile = await s.GetRiskProfile(region_node_pb2.GetRiskProfileRequest(agent_id="a-batch"))
    assert profile.evaluations == 39


async def test_read_ahead_stops_at_its_bound_and_resumes_as_answers_go_out() -> None:
    sizes = [3, 4, 1, 5, 2]

    async def source() -> AsyncIterator[region_node_pb2.EvaluateStreamRequest]:
        for n in sizes:
            yield batch([BENIGN] * n)

    read_ahead = ReadAhead(8, stream_weight)
    reader = read_ahead.read(source())
    got = [len((await anext(reader)).actions) for _ in range(3)]  # 3 + 4 + 1 = 8
    assert got == [3, 4, 1] and read_ahead.pending == 8
    blocked = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # 8 + 5 > 8: waits for answers
    read_ahead.release(3)
    await asyncio.sleep(0.05)
    assert not blocked.done()  # 5 + 5 > 8 still
    read_ahead.release(4)
    assert len((await asyncio.wait_for(blocked, 5)).actions) == 5
    assert read_ahead.pending == 6
    read_ahead.release(6)
    assert len((await anext(reader)).actions) == 2
    await reader.aclose()
    # a message larger than the bound still goes through when nothing is pending
    big = ReadAhead(2, stream_weight).read(source())
    assert len((await anext(big)).actions) == 3
    await big.aclose()
