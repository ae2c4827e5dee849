"""A gateway stream's handler cancelled while its relay ends a child task (the writer of
the upstream stream, the reader of the client's): the cancellation is the handler's own
and ends it, though it arrives as the child's own cancellation does.

Real servers on loopback (port 0): real region nodes, the coordinator, a client. The
handler task is cancelled as the gRPC server cancels it when the client goes away or a
drain's grace runs out, at the one moment where that was swallowed before: while the
relay waits for the child it has just cancelled. A task factory (public asyncio API)
notes which task started each of the relay's children, so the test finds the handler
and sees that moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any

import pytest
from meshutil import Mesh, add_region, wait_for
from test_gateway import start_gateway

from nethical_grpc.v1 import coordinator_pb2, governance_pb2

Req = coordinator_pb2.CoordinatorServiceEvaluateStreamRequest

WRITER = "StreamRelay._write"
READER = "StreamRelay._read_client"


def stream_request(i: int) -> Req:
    return Req(
        action=governance_pb2.AgentAction(
            agent_id="agent-1",
            action_text=f"SELECT {i} FROM t",
            action_type="query",
            request_id=f"req-{i}",
        ),
        region_id="r1" if i == 0 else "",
    )


class Children:
    """The relay's child tasks as they start, each with the task that started it (the
    coordinator's handler); cancels that handler once the child named ``trigger`` is
    being cancelled, before the handler resumes from waiting for it."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger
        self.started: list[tuple[str, asyncio.Task[Any], asyncio.Task[Any] | None]] = []
        self.handler: asyncio.Task[Any] | None = None  # the one cancelled

    def factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        name = getattr(coro, "__qualname__", "")
        if name in (WRITER, READER):
            self.started.append((name, task, asyncio.current_task(loop)))
        return task

    async def watch(self) -> None:
        # runs every turn of the loop: a cancelled child ends on the turn after its
        # cancel, and the task waiting for it resumes on the turn after that
        while self.handler is None:
            for name, child, parent in self.started:
                if name == self.trigger and (child.cancelling() or child.cancelled()):
                    assert parent is not None
                    self.handler = parent
                    parent.cancel()
                    break
            await asyncio.sleep(0)

    def running(self) -> list[str]:
        return [name for name, child, _ in self.started if not child.done()]


@pytest.fixture
async def children() -> AsyncIterator[Children]:
    loop = asyncio.get_running_loop()
    kids = Children(WRITER)
    loop.set_task_factory(kids.factory)
    try:
        yield kids
    finally:
        loop.set_task_factory(None)


def upstream_calls(mesh: Mesh) -> dict[str, int]:
    assert mesh.federation is not None
    stats = mesh.federation.registry.balancer.get_statistics()
    return {k: v["requests"] for k, v in stats["instances"].items()}


async def _open_stream(mesh: Mesh) -> tuple[Any, str]:
    """A stream through the gateway that has had 3 actions answered by one node of r1;
    the client's side stays open. The call and the node that answered."""
    stub = await start_gateway(mesh, strategy="round_robin")
    call = stub.EvaluateStream(timeout=20)
    answers = []
    for i in range(3):
        await call.write(stream_request(i))
        answers.append(await call.read())
    [serving] = {a.evaluation.instance_id for a in answers}
    return call, serving


async def _cancel_the_handler_mid_stop(kids: Children) -> None:
    watching = asyncio.ensure_future(kids.watch())
    try:
        await asyncio.wait_for(asyncio.shield(watching), 5.0)
    finally:
        watching.cancel()
    handler = kids.handler
    assert handler is not None
    done, _ = await asyncio.wait([handler], timeout=2.0)
    assert done, "the handler went on after it was cancelled"
    assert kids.running() == [], "the relay left child tasks running"


async def test_a_handler_cancelled_while_the_relay_stops_its_writer_stops_there(
    mesh: Mesh, children: Children
) -> None:
    """The serving node dies with nothing in doubt: the relay would fail over to the
    other node. The handler is cancelled while the relay waits for its cancelled writer;
    before, that cancel was taken for the writer's own and swallowed: the handler opened
    a stream to the other node and went on relaying for a client that had gone."""
    await add_region(mesh, "r1", instances=2)
    call, serving = await _open_stream(mesh)
    before = upstream_calls(mesh)
    index = int(serving.rsplit("-", 1)[1])
    await mesh.regions["r1"][index][0].server.stop(0)
    try:
        await _cancel_the_handler_mid_stop(children)
        await asyncio.sleep(0.3)  # past the failover's backoff
        assert upstream_calls(mesh) == before, "an upstream stream opened after the cancel"
        assert mesh.federation is not None
        total = mesh.federation.registry.balancer.get_statistics()["total"]
        assert total["in_flight"] == 0
    finally:
        call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()


async def test_a_handler_cancelled_while_the_relay_stops_its_reader_stops_there(
    mesh: Mesh, children: Children
) -> None:
    """The only node dies: the relay ends with an error while the client's stream is
    open, and stops its reader of it. The handler is cancelled while it waits for that
    reader; before, the cancel was swallowed and the handler went on to answer the client
    with the relay's error instead of ending as cancelled."""
    children.trigger = READER
    await add_region(mesh, "r1", instances=1)
    call, _ = await _open_stream(mesh)
    await mesh.regions["r1"][0][0].server.stop(0)
    try:
        await _cancel_the_handler_mid_stop(children)
        assert mesh.federation is not None
        await wait_for(
            lambda: (
                mesh.federation is not None
                and mesh.federation.registry.balancer.get_statistics()["total"]["in_flight"] == 0
            )
        )
        await asyncio.sleep(0.3)  # time for a status to reach the client
    finally:
        call.cancel()
    # the client's own cancel ends its call: the handler sent it nothing after its own
    # (before: the relay's UNAVAILABLE "no usable instance")
    with pytest.raises(asyncio.CancelledError):
        await call.read()
