"""``nethical-mesh evaluate``: one agent action judged by a coordinator's gateway or a
region node, printed as a verdict (or JSON), with an exit status a script can gate on."""

from __future__ import annotations

import argparse
import sys

from google.protobuf.message import Message

from nethical_grpc import convert
from nethical_grpc.cli.client_commands import ask, print_json
from nethical_grpc.cli.table import decision_name, severity_name
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
    text = sys.stdin.read() if args.text == "-" else args.text
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
    if args.node and args.region:
        print(
            "error: --region is for a coordinator; a region node evaluates in its own region",
            file=sys.stderr,
        )
        return 2
    action = read_action(args)
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
                    action=action, region_id=args.region
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
    at_or_above = args.fail_at is not None and evaluation.decision >= convert.decision_to_proto(
        args.fail_at.upper()
    )
    return DECISION_EXIT if at_or_above else 0
