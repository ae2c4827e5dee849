"""EvaluateStream batches whose answer would not fit in the node's messages, on a real
region node with a small ``max_message_bytes``: each is refused alone, before anything
of it is evaluated or recorded, and the stream goes on."""

from __future__ import annotations

import grpc
import pytest
from meshutil import Mesh, add_region
from test_detect_workers import detection, start_workers
from test_evaluate import BENIGN, HARMFUL, counts_by_decision, stub
from test_evaluate_batches import batch, stream, total

from nethical_grpc.v1 import region_node_pb2

LIMIT = 64 * 1024
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_batch_whose_answer_would_not_fit_is_refused_alone_and_not_recorded(
    mesh: Mesh, workers: int
) -> None:
    await add_region(mesh, "r1", max_message_bytes=LIMIT, detect_workers=workers)
    await add_region(mesh, "r2", detect_workers=0)  # the default limit: measures the answers
    s, measure = stub(mesh, "r1"), stub(mesh, "r2")
    before = 0
    if workers:  # the batches' detection runs in the worker
        await start_workers(s)
        before = total(await counts_by_decision(s))
    # the request fits in a message, its answer (findings on every action) does not
    big = batch([HARMFUL] * 200, prefix="big", agent="agent-big")
    assert big.ByteSize() < LIMIT
    assert (await stream(measure, [big]))[0].ByteSize() > LIMIT
    # answers that fit, well under what the worst findings could take
    fitting = batch([BENIGN] * 200, prefix="fit", agent="agent-fit")
    small = batch([HARMFUL, BENIGN, HARMFUL], prefix="after", agent="agent-after")

    answers = await stream(s, [fitting, big, small])

    assert len(answers) == 3
    assert [r.evaluation.request_id for r in answers[0].results] == [f"fit-{i}" for i in range(200)]
    refused = answers[1]
    assert refused.WhichOneof("result") == "error" and not refused.results
    assert refused.error.code == EXHAUSTED
    assert "200 actions" in refused.error.message
    assert f"{LIMIT:,}-byte message limit" in refused.error.message
    assert "nothing of it was evaluated" in refused.error.message
    assert [r.evaluation.request_id for r in answers[2].results] == [
        "after-0",
        "after-1",
        "after-2",
    ]
    if workers:  # both large batches' findings came from the worker
        assert "batches detected there 2," in await detection(s)
    # the windows and the profiles never saw the refused batch
    assert total(await counts_by_decision(s)) - before == 200 + 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.GetRiskProfile(
            region_node_pb2.GetRiskProfileRequest(agent_id="agent-big"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
