"""``nethical-mesh evaluate``: one agent action (or a file of them, over EvaluateStream)
judged by a coordinator's gateway or a region node, printed as a verdict (or JSON), with
an exit status a script can gate on."""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from nethical_grpc import convert
from nethical_grpc.cli.args import DECISION_CHOICES
from nethical_grpc.cli.client_commands import ask, print_json, read_input
from nethical_grpc.cli.table import counted, decision_name, render, severity_name, shown
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    governance_pb2,
    region_node_pb2,
    region_node_pb2_grpc,
)

#: Exit status when the decision is at or above ``--fail-at`` (0: answered below it,
#: 1: the call failed, 2: a usage error).
DECISION_EXIT: int = 3


def read_action(args: argparse.Namespace) -> governance_pb2.AgentAction:
    """The action the flags describe; ``TEXT`` ``-`` reads the action text from stdin
    (the node checks every field: what it refuses comes back as INVALID_ARGUMENT)."""
    text = read_input("-") if args.text == "-" else args.text
    return governance_pb2.AgentAction(
        agent_id=args.agent_id,
        action_text=text,
        action_type=args.action_type,
        stated_intent=args.intent,
        context=dict(args.context),
        request_id=args.request_id,
    )


def verdict_text(evaluation: governance_pb2.ActionEvaluation, endpoint: str, attempts: int) -> str:
    """A verdict for a terminal: decision, risk and its parts, who served it, the
    findings (most severe first, as the node orders them)."""
    e = evaluation
    tries = f"; {attempts} attempts" if attempts > 1 else ""
    lines = [
        f"decision    {decision_name(e.decision)}",
        f"risk        {e.risk_score:.4f} (rules {e.rule_risk:.4f}, model "
        f"{e.model_probability:.4f})",
        f"confidence  {e.confidence:.4f}",
        f"served by   region {e.region_id}, instance {e.instance_id} ({endpoint}{tries})",
        f"latency     {e.latency.ToNanoseconds() / 1e6:.3f} ms",
    ]
    if e.request_id:
        lines.append(f"request id  {e.request_id}")
    if not e.violations:
        lines.append("findings    none")
        return "\n".join(lines)
    lines.append(f"findings    {len(e.violations)}")
    width = max(len(severity_name(v.severity)) for v in e.violations)
    lines += [
        f"  {severity_name(v.severity):<{width}}  {v.rule_id or v.type} "
        f"(confidence {v.confidence:.2f}): {v.message}"
        for v in e.violations
    ]
    return "\n".join(lines)


async def run_evaluate(args: argparse.Namespace) -> int:
    if args.node and (args.region or args.stay_in_region):
        flag = "--region" if args.region else "--stay-in-region"
        print(
            f"error: {flag} is for a coordinator; a region node evaluates in its own region",
            file=sys.stderr,
        )
        return 2
    if (args.text is None) == (args.actions is None):
        print("error: give TEXT or --actions FILE, not both or neither", file=sys.stderr)
        return 2
    if args.actions is not None:
        if args.request_id:
            print(
                "error: --request-id is for one action; with --actions, give each line "
                "its request_id",
                file=sys.stderr,
            )
            return 2
        if args.batch > convert.MAX_STREAM_BATCH_ACTIONS:
            print(
                f"error: --batch must be at most {convert.MAX_STREAM_BATCH_ACTIONS}",
                file=sys.stderr,
            )
            return 2
        try:
            actions = read_actions(args)
            batches = stream_batches(actions, args.batch, _stream_request(args), args.actions)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return await _evaluate_many(args, actions, batches)
    try:
        action = read_action(args)
    except (OSError, ValueError) as exc:  # stdin that is not UTF-8, say
        print(f"error: {exc}", file=sys.stderr)
        return 2
    response: Message
    if args.node:
        answer = await ask(
            args,
            lambda ch: region_node_pb2_grpc.RegionNodeServiceStub(ch).Evaluate(
                region_node_pb2.EvaluateRequest(action=action), timeout=args.timeout
            ),
        )
        if answer is None:
            return 1
        response, evaluation, endpoint, attempts = answer, answer.evaluation, args.target, 1
    else:
        routed = await ask(
            args,
            lambda ch: coordinator_pb2_grpc.CoordinatorServiceStub(ch).Evaluate(
                coordinator_pb2.CoordinatorServiceEvaluateRequest(
                    action=action, region_id=args.region, stay_in_region=args.stay_in_region
                ),
                timeout=args.timeout,
            ),
        )
        if routed is None:
            return 1
        response, evaluation = routed, routed.evaluation
        endpoint, attempts = routed.endpoint, routed.attempts
    if args.json:
        print_json(response)
    else:
        print(verdict_text(evaluation, endpoint, attempts))
    return DECISION_EXIT if _at_or_above(args, [evaluation]) else 0


def _at_or_above(
    args: argparse.Namespace, evaluations: Sequence[governance_pb2.ActionEvaluation]
) -> bool:
    """Whether a decision reached ``--fail-at``."""
    if args.fail_at is None:
        return False
    level = convert.decision_to_proto(args.fail_at.upper())
    return any(e.decision >= level for e in evaluations)


#: An action of ``--actions`` and the line of the file it is on.
Numbered = tuple[int, governance_pb2.AgentAction]


def read_actions(args: argparse.Namespace) -> list[Numbered]:
    """The actions of ``--actions`` (a file, or ``-`` for stdin), each with its line:
    one JSON object a line in protobuf's JSON mapping of ``AgentAction`` (``agent_id``
    or ``agentId``, ...; blank lines skipped). The action flags fill in what a line
    leaves empty. A line that does not parse is a ``ValueError`` naming it."""
    source = args.actions
    actions: list[Numbered] = []
    for number, line in enumerate(read_input(source).splitlines(), start=1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):  # protobuf's message for what is no object
            # misleads: [1] was "Failed to parse 1 field", "x" no field "x", null a TypeError
            raise ValueError(
                f"{source}, line {number}: not a JSON object (an AgentAction a line, "
                'e.g. {"agentId": "a1", "actionText": "..."})'
            )
        action = governance_pb2.AgentAction()
        try:
            json_format.Parse(line, action)
        except json_format.ParseError as exc:  # its message can run over lines: one here
            said = " ".join(str(exc).split())
            raise ValueError(f"{source}, line {number}: {said}") from None
        action.agent_id = action.agent_id or args.agent_id
        action.action_type = action.action_type or args.action_type
        action.stated_intent = action.stated_intent or args.intent
        for key, value in args.context:
            action.context.setdefault(key, value)
        actions.append((number, action))
    if not actions:
        raise ValueError(f"no actions in {source}")
    return actions


#: The stream message of a batch of actions (a region node's or a coordinator's).
StreamRequest = Callable[[Sequence[governance_pb2.AgentAction]], Message]

#: The most bytes of a stream message ``--actions`` sends: half the client's message
#: limit, the margin for a server whose own limit is lower.
STREAM_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES // 2


def _stream_request(args: argparse.Namespace) -> StreamRequest:
    """The stream message the flags ask for, of a batch of actions."""
    if args.node:
        return lambda actions: region_node_pb2.EvaluateStreamRequest(actions=actions)
    return lambda actions: coordinator_pb2.CoordinatorServiceEvaluateStreamRequest(
        actions=actions, region_id=args.region, stay_in_region=args.stay_in_region
    )


def stream_batches(
    numbered: Sequence[Numbered],
    most: int,
    request_of: StreamRequest,
    source: str,
    budget: int = STREAM_MESSAGE_BYTES,
) -> list[list[governance_pb2.AgentAction]]:
    """The actions cut into the batches of the stream's messages, in order: each of at
    most ``most`` actions and, encoded by ``request_of``, ``budget`` bytes (an action
    larger than that alone). An action too large for a message of the client's
    (:data:`DEFAULT_MAX_MESSAGE_BYTES`) is a ``ValueError`` naming its line in ``source``."""
    head = request_of([]).ByteSize()
    batches: list[list[governance_pb2.AgentAction]] = []
    batch: list[governance_pb2.AgentAction] = []
    size = head
    for line, action in numbered:
        each = request_of([action]).ByteSize() - head
        if head + each > DEFAULT_MAX_MESSAGE_BYTES:
            raise ValueError(
                f"{source}, line {line}: the action takes {each:,} bytes, more than a "
                f"message carries ({DEFAULT_MAX_MESSAGE_BYTES:,})"
            )
        if batch and (len(batch) == most or size + each > budget):
            batches.append(batch)
            batch, size = [], head
        batch.append(action)
        size += each
    batches.append(batch)
    return batches


class _WrongAnswer(Exception):
    """A stream answer that matches no message sent (more answers, or other counts)."""


async def _evaluate_many(
    args: argparse.Namespace,
    numbered: list[Numbered],
    batches: list[list[governance_pb2.AgentAction]],
) -> int:
    """The actions over one EvaluateStream, a message a batch (:func:`stream_batches`);
    a line per result (or a JSON line with ``--json``) and the count per decision, each
    action named by its line. Exit 1 when an action got an error, else as for one
    action."""
    request_of = _stream_request(args)
    # what was answered before a failure is kept: those actions were evaluated
    results: list[governance_pb2.ActionResult] = []

    async def stream(channel: grpc.aio.Channel) -> bool:
        stub = (
            region_node_pb2_grpc.RegionNodeServiceStub(channel)
            if args.node
            else coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        )
        call = stub.EvaluateStream((request_of(b) for b in batches), timeout=args.timeout)
        answered = 0
        async for answer in call:  # an answer a batch, in the batches' order
            if answered >= len(batches) or (
                answer.results and len(answer.results) != len(batches[answered])
            ):
                raise _WrongAnswer(
                    f"the server's answer #{answered + 1} does not match the "
                    f"{len(batches)} messages sent (not a mesh server's answer?)"
                )
            if answer.results:
                results.extend(answer.results)
            else:  # the whole message refused
                refused = governance_pb2.ActionResult(error=answer.error)
                results.extend(refused for _ in batches[answered])
            answered += 1
        return True

    try:
        finished = await ask(args, stream)
    except _WrongAnswer as exc:
        print(f"error: {exc}", file=sys.stderr)
        finished = None
    if finished is None:
        if not results:
            return 1
        rest = numbered[len(results) :]
        numbered = numbered[: len(results)]
        if rest:  # else every action was answered before the call failed
            first, last = rest[0][0], rest[-1][0]
            lines = f"line {first}" if first == last else f"lines {first}-{last}"
            print(
                f"error: {args.actions}, {lines}: no result (the stream ended early)",
                file=sys.stderr,
            )
    for (line, _), r in zip(numbered, results, strict=True):
        if r.HasField("error"):
            message = shown(_in_action(r.error.message))
            print(f"error: {args.actions}, line {line}: {message}", file=sys.stderr)
            for v in r.error.field_errors:
                print(f"  {shown(_in_action(v.field))}: {shown(v.description)}", file=sys.stderr)
    if args.json:
        for r in results:
            print_json(r, indent=None)
    else:
        print(results_text(numbered, results))
    evaluations = [r.evaluation for r in results if r.HasField("evaluation")]
    if finished is None or len(evaluations) < len(results):
        return 1
    return DECISION_EXIT if _at_or_above(args, evaluations) else 0


#: How the stream names an action within its message (``actions[3].action_text``,
#: ``actions[3]: invalid action``): an index that is no line of the file.
_IN_MESSAGE = re.compile(r"^actions\[\d+\](?:\.|: )")


def _in_action(text: str) -> str:
    """A field or an error named within its action, without its index in the message."""
    return _IN_MESSAGE.sub("", text)


def _error_text(error: governance_pb2.ActionError) -> str:
    """An action's error in a line: its first field's, named within the action, else
    the message."""
    if not error.field_errors:
        return _in_action(error.message)
    first = error.field_errors[0]
    return f"{_in_action(first.field)}: {first.description}"


def results_text(
    numbered: Sequence[Numbered], results: Sequence[governance_pb2.ActionResult]
) -> str:
    """A line per action (its request id, else ``#`` and its line in the file; agent,
    decision, risk, first finding) and the count per decision."""
    rows = []
    for (line, action), r in zip(numbered, results, strict=True):
        name = action.request_id or f"#{line}"
        if r.HasField("error"):
            rows.append([name, action.agent_id, "ERROR", "-", _error_text(r.error)])
            continue
        e = r.evaluation
        first = e.violations[0].rule_id if e.violations else "-"
        rows.append(
            [name, action.agent_id, decision_name(e.decision), f"{e.risk_score:.3f}", first]
        )
    table = render(["action", "agent", "decision", "risk", "first finding"], rows, (1, 2, 4))
    decisions = Counter(row[2] for row in rows)
    known = [d.upper() for d in DECISION_CHOICES]
    unknown = sorted(decisions.keys() - {*known, "ERROR"})  # a newer server's: UNKNOWN(n)
    order = [*known, *unknown, "ERROR"]
    summary = ", ".join(f"{d} {decisions[d]:,}" for d in order if d in decisions)
    return f"{table}\n{counted(len(results), 'action', 'actions')}: {summary}"
