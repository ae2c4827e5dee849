"""``nethical-mesh``: run region nodes and coordinators; ingest, query, evaluate, search
audit records, read risk profiles, stored metric rows and node info, score feature rows,
check health; run the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from nethical_grpc.cli.args import (
    AGGREGATION_CHOICES,
    DECISION_CHOICES,
    FAIL_AT_CHOICES,
    METRICS_OFF,
    METRICS_PORT_ENV,
    QUERY_LIMIT_MAX,
    When,
    bounded_int,
    parse_duration_ns,
    parse_duration_or_zero_ns,
    parse_log_level,
    parse_metrics_port,
    parse_pair,
    parse_port,
    parse_positive_int,
    parse_proto_duration_ns,
    parse_target,
    parse_timeout_s,
    parse_unit_interval,
    parse_weight,
    parse_when,
    parse_when_or_all,
    shown_bytes,
)
from nethical_grpc.security.flags import add_client_arguments, add_server_arguments
from nethical_grpc.storage.backend import DEFAULT_AUDIT_RETENTION_DAYS, DEFAULT_MEMORY_BOUND

log = logging.getLogger("nethical_mesh")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        type=parse_log_level,
        default=os.environ.get("NETHICAL_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env NETHICAL_LOG_LEVEL; INFO)",
    )


#: The default start of the in-region reads' ranges (metrics, aggregate).
_AN_HOUR_AGO = When(ago_ns=3_600_000_000_000)

#: Where the client commands call by default: a coordinator's port, a region node's.
COORDINATOR = "127.0.0.1:50050"
REGION_NODE = "127.0.0.1:50051"


def _client_parser(
    sub: Any,
    name: str,
    help_text: str,
    *,
    target: str,
    timeout: float,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A client subcommand's parser with what every one takes: --target, --timeout,
    --json, the TLS and token flags, --log-level."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description)
    what = "a coordinator" if target == COORDINATOR else "a region node"
    p.add_argument(
        "--target", type=parse_target, default=target, help=f"{what}, HOST:PORT ({target})"
    )
    p.add_argument(
        "--timeout", type=parse_timeout_s, default=timeout, help=f"deadline in s ({timeout:g})"
    )
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    add_client_arguments(p)
    _common(p)
    return p


def _range(
    p: argparse.ArgumentParser,
    since: When | None = None,
    since_text: str = "",
    required: bool = False,
) -> None:
    """``--since`` and ``--until``: each a duration back from now or a time. ``since``:
    the default start (``since_text`` says it; "0" then means none unless ``required``)."""
    parse = parse_when if required or since is None else parse_when_or_all
    shown = f" ({since_text})" if since_text else ""
    p.add_argument(
        "--since",
        type=parse,
        default=since,
        metavar="WHEN",
        help=f"from WHEN{shown}: a duration back from now (15m, 2h) or a time "
        "(2026-12-01T02:00:00Z; no offset: UTC)",
    )
    p.add_argument("--until", type=parse_when, metavar="WHEN", help="up to WHEN, as --since (now)")


def _watch_interval(p: argparse.ArgumentParser) -> None:
    """``--watch INTERVAL``: the command again every INTERVAL until Ctrl-C."""
    p.add_argument(
        "--watch",
        type=parse_duration_ns,
        metavar="INTERVAL",
        help="ask again every INTERVAL (e.g. 2s) until Ctrl-C; with --json, one line an answer",
    )


def _pairs(p: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A repeatable ``KEY=VALUE`` option, read as a list of pairs."""
    p.add_argument(
        flag, action="append", type=parse_pair, default=[], metavar="KEY=VALUE", help=help_text
    )


def _server_args(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=parse_port,
        default=default_port,
        help=f"port; 0 picks a free one ({default_port})",
    )
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument(
        "--max-message-bytes",
        type=parse_positive_int,
        default=8 * 1024 * 1024,
        help="largest message received or sent; a larger answer is refused (8388608)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=parse_positive_int,
        default=1000,
        help="calls in progress at once; more get RESOURCE_EXHAUSTED; health checks and "
        "reflection are not counted (1000)",
    )
    p.add_argument("--no-reflection", action="store_true", help="turn server reflection off")
    p.add_argument(
        "--drain-announce",
        type=parse_duration_or_zero_ns,
        default=1_000_000_000,
        help="how long health says NOT_SERVING before the server stops (1s; 0: at once)",
    )
    p.add_argument(
        "--drain-grace",
        type=parse_duration_or_zero_ns,
        default=5_000_000_000,
        help="how long in-flight calls get to finish (5s; 0: cancelled at once)",
    )
    p.add_argument(
        "--metrics-port",
        type=parse_metrics_port,
        # a string default goes through parse_metrics_port too: a bad value is a usage error
        default=os.environ.get(METRICS_PORT_ENV) or None,
        metavar="PORT|off",
        help=f"serve Prometheus metrics on this port; 0 picks a free one; {METRICS_OFF}: "
        f"none, whatever {METRICS_PORT_ENV} says (env {METRICS_PORT_ENV}; off by default)",
    )
    p.add_argument(
        "--otlp-endpoint",
        # empty, as OpenTelemetry reads it: unset (a manifest's placeholder)
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        help="export traces and metrics over OTLP/gRPC to this endpoint "
        "(env OTEL_EXPORTER_OTLP_ENDPOINT; off by default)",
    )
    add_server_arguments(p)
    _common(p)


class _Version(argparse.Action):
    """``--version``: prints :func:`_version` and exits 0 (worked out only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    """``nethical-mesh 0.1.0 (Python 3.11.7, grpcio 1.85.3, protobuf 7.36.2)``: what a
    bug report needs, without importing the mesh's heavier parts."""
    from importlib.metadata import PackageNotFoundError, version

    from nethical_grpc import __version__

    parts = [f"Python {sys.version.split()[0]}"]
    for package in ("grpcio", "protobuf"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{package} {version(package)}")
    return f"nethical-mesh {__version__} ({', '.join(parts)})"


class _CommandParser(argparse.ArgumentParser):
    """A command's parser that also takes positional arguments after flags:
    ``ingest latency_ms --label route=/x data.txt``. Python 3.11's argparse ends a
    command's positional arguments at its first flag, so FILE there was "unrecognized";
    what plain parsing leaves over is parsed again, intermixed. Intermixed parsing does
    not keep ``--``, so the words before the first ``--`` are parsed intermixed and the
    words after it are positional arguments (``audit drop --decision block -- -rf``).
    A word that is not UTF-8 is a usage error naming its argument: no protobuf string
    field could carry it."""

    _inner = False  # set while argparse's intermixed parsing calls back in
    _tail: list[str] | None = None  # the words after "--", for the positional pass
    _passes = 0  # the intermixed parsing's calls so far: options, then positionals

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            self._passes += 1
            if self._passes == 2 and self._tail is not None:
                args = [*(args or []), "--", *self._tail]
            return super().parse_known_args(args, namespace)
        parsed, extras = super().parse_known_args(args, copy.copy(namespace))
        if extras and args is not None:
            parsed, extras = self._intermixed(list(args), namespace)
        self._refuse_non_utf8(parsed)
        return parsed, extras

    def _intermixed(
        self, args: list[str], namespace: argparse.Namespace | None
    ) -> tuple[argparse.Namespace, list[str]]:
        """``args`` parsed intermixed, up to the first ``--``; the words after it are
        positional arguments."""
        head, self._tail = args, None
        if "--" in args:
            cut = args.index("--")
            head, self._tail = args[:cut], args[cut + 1 :]
        self._inner, self._passes = True, 0
        try:
            return self.parse_known_intermixed_args(head, namespace)
        finally:
            self._inner, self._tail = False, None

    def _refuse_non_utf8(self, parsed: argparse.Namespace) -> None:
        """The usage error for a word that is not UTF-8 (argv keeps such bytes as
        surrogate escapes); file names are left alone, their content is checked."""
        for action in self._actions:
            if action.dest in _FILE_ARGUMENTS:
                continue
            value = getattr(parsed, action.dest, None)
            for word in _words(value):
                try:
                    word.encode("utf-8")
                except UnicodeEncodeError:
                    name = "/".join(action.option_strings) or action.metavar or action.dest
                    self.error(f"argument {name}: not valid UTF-8: '{shown_bytes(word)}'")


#: Arguments that name files (which may be named in any bytes): what they hold is
#: checked when read.
_FILE_ARGUMENTS = frozenset({"file", "actions"})


def _words(value: object) -> list[str]:
    """The strings in an argument's value (a string, a list of them, of pairs ...)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [word for item in value for word in _words(item)]
    return []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nethical-mesh", description="Nethical mesh: federated AI-governance metrics."
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    region = sub.add_parser("region", help="run a region node")
    region.add_argument("--region-id", required=True)
    region.add_argument("--instance-id", default="", help="default: REGION-PORT")
    region.add_argument(
        "--window",
        type=parse_duration_ns,
        default=10_000_000_000,
        help="tumbling window width (10s)",
    )
    region.add_argument(
        "--retention",
        type=parse_duration_ns,
        default=86_400_000_000_000,
        help="how long windows are kept (24h)",
    )
    region.add_argument(
        "--rollup-after",
        type=parse_duration_or_zero_ns,
        default=3_600_000_000_000,
        help="merge windows older than this into --rollup-window-wide ones, and refuse "
        "observations older than it (1h; 0: keep every window at full width and accept "
        "observations back to --retention)",
    )
    region.add_argument(
        "--rollup-window",
        type=parse_duration_ns,
        default=300_000_000_000,
        help="width of the rollup windows, a multiple of --window (5m)",
    )
    region.add_argument("--histogram-scale", type=int, default=6)
    region.add_argument("--max-buckets", type=int, default=2048)
    region.add_argument(
        "--max-label-sets",
        type=int,
        default=1000,
        help="label sets per metric before RESOURCE_EXHAUSTED (1000)",
    )
    region.add_argument("--max-series", type=int, default=100_000)
    region.add_argument(
        "--serve-while-restoring",
        action="store_true",
        help="answer at once after a restart, while the windows flushed before it are "
        "read back (answers name the time they leave out meanwhile); default: "
        "NOT_SERVING until they are back",
    )
    region.add_argument(
        "--region-scope",
        action="store_true",
        help="this instance's data is the whole region's (shared store or a "
        "replica fed the full stream): the coordinator asks one instance",
    )
    region.add_argument(
        "--cache-url",
        default=os.environ.get("NETHICAL_CACHE_URL", "memory://"),
        help="redis://HOST:PORT/DB or memory:// (env NETHICAL_CACHE_URL)",
    )
    region.add_argument(
        "--timeseries-url",
        default=os.environ.get("NETHICAL_TIMESERIES_URL", "memory://"),
        help="postgresql://..., sqlite:///PATH[?cache_mib=64] or memory:// "
        "(env NETHICAL_TIMESERIES_URL)",
    )
    region.add_argument(
        "--audit-url",
        default=os.environ.get("NETHICAL_AUDIT_URL", "memory://"),
        help="http(s)://HOST:9200, sqlite:///PATH[?cache_mib=64&max_records=N] or memory:// "
        "(env NETHICAL_AUDIT_URL)",
    )
    region.add_argument(
        "--memory-store-records",
        type=int,
        # a string: argparse converts it, so a bad value is a usage error, not a traceback
        default=os.environ.get("NETHICAL_MEMORY_STORE_RECORDS", str(DEFAULT_MEMORY_BOUND)),
        help="records an in-memory store keeps, the newest (audit records; time-series rows "
        f"per table); 0: no bound (env NETHICAL_MEMORY_STORE_RECORDS, default "
        f"{DEFAULT_MEMORY_BOUND})",
    )
    region.add_argument(
        "--audit-retention-days",
        type=int,
        default=os.environ.get("NETHICAL_AUDIT_RETENTION_DAYS", str(DEFAULT_AUDIT_RETENTION_DAYS)),
        help="days the audit store keeps records, 1 to 36500: a SQLite or in-memory store "
        "deletes older ones hourly, Elasticsearch by its lifecycle policy (env "
        f"NETHICAL_AUDIT_RETENTION_DAYS, default {DEFAULT_AUDIT_RETENTION_DAYS})",
    )
    region.add_argument(
        "--flush-interval",
        type=parse_duration_ns,
        default=10_000_000_000,
        help="how often window summaries are written to the time-series store (10s)",
    )
    region.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="differential privacy for summaries leaving the region: epsilon per release "
        "(off by default; needs --dp-value-bound)",
    )
    region.add_argument(
        "--dp-window-budget", type=float, default=None, help="epsilon per window (10x --dp-epsilon)"
    )
    region.add_argument(
        "--dp-value-bound", type=float, default=None, help="public bound B: values clipped to ±B"
    )
    region.add_argument(
        "--dp-min-count",
        type=int,
        default=None,
        help="groups with a smaller noisy count are left out (50)",
    )
    region.add_argument(
        "--dp-mechanism", choices=("laplace", "geometric"), default=None, help="(laplace)"
    )
    region.add_argument(
        "--dp-nonnegative", action="store_true", help="values are in [0, B] rather than [-B, B]"
    )
    region.add_argument(
        "--wal-dir",
        type=Path,
        default=None,
        help="write-ahead log directory: acknowledged batches survive a kill (off by default)",
    )
    region.add_argument(
        "--no-evaluate",
        action="store_true",
        help="do not load a model: Evaluate and Score answer UNAVAILABLE (ingest-only nodes)",
    )
    region.add_argument(
        "--model",
        type=Path,
        default=None,
        help="risk model: a TorchScript file, or an .npz of MLP weights (run in NumPy); "
        "default: the bundled model",
    )
    region.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N for the risk model"
    )
    region.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="model precision"
    )
    region.add_argument(
        "--model-backend",
        choices=("auto", "torch", "numpy"),
        default="auto",
        help="auto: the bundled fp32 model in NumPy unless --device names a GPU (measured "
        "faster per Evaluate, GPU host included); PyTorch for a TorchScript --model, fp16 or bf16",
    )
    region.add_argument(
        "--inference-threads",
        type=int,
        default=1,
        help="CPU threads for the model and the BLAS, Numba and torch pools under it (1); "
        "match the pod's CPU quota",
    )
    region.add_argument(
        "--detect-workers",
        type=int,
        default=None,
        help="worker processes running the rule detectors on large evaluation batches, "
        "beside the event loop (default: 1 when the node may use two cores or more, else "
        "0: in process)",
    )
    _server_args(region, 50051)

    coord = sub.add_parser("coordinator", help="run the coordinator")
    coord.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="REGION=TARGET[,..]",
        help="a region and its instances, HOST:PORT[@WEIGHT] or dns:///NAME:PORT[@WEIGHT] "
        "(re-resolved); repeat for each region",
    )
    from coordinator.gateway_config import add_arguments as add_gateway_arguments

    add_gateway_arguments(coord)
    coord.add_argument(
        "--summary-transport",
        choices=("auto", "stream", "unary"),
        default="auto",
        help="how global queries reach region nodes: one long-lived StreamSummaries stream "
        "per instance (stream), a GetSummaries call per query (unary), or stream unless "
        "telemetry is on (auto, the default: with telemetry each region query is its own "
        "traced call)",
    )
    _server_args(coord, 50050)
    add_client_arguments(coord, prefix="region-")

    query = _client_parser(
        sub,
        "query",
        "global metrics from a coordinator (or one region node's, with --node)",
        target=COORDINATOR,
        timeout=10.0,
    )
    query.add_argument(
        "metrics",
        nargs="*",
        metavar="METRIC",
        help="metrics to show, as --metric names them; default all",
    )
    query.add_argument("--metric", action="append", default=[], help="repeat; default all")
    query.add_argument(
        "--quantile", action="append", type=float, default=[], help="repeat; default 0.5 0.9 0.99"
    )
    query.add_argument("--region", action="append", default=[], help="only these regions")
    query.add_argument(
        "--weight",
        action="append",
        type=parse_weight,
        default=[],
        metavar="REGION=W",
        help="weights for a weighted mean of region means",
    )
    _pairs(query, "--label", "only series with this label")
    query.add_argument("--group-by", action="append", default=[], help="keep a label apart")
    _range(query)
    query.add_argument("--breakdown", action="store_true", help="per-region figures too")
    query.add_argument(
        "--region-timeout", type=parse_proto_duration_ns, help="deadline of each region call (2s)"
    )
    query.add_argument(
        "--node",
        action="store_true",
        help="the target is a region node: its own summaries, as a coordinator of it alone "
        "would answer (not --region, --weight, --breakdown or --region-timeout)",
    )
    _watch_interval(query)

    regions = _client_parser(
        sub,
        "regions",
        "regions and instance health from a coordinator",
        target=COORDINATOR,
        timeout=5.0,
    )
    _watch_interval(regions)

    evaluate = _client_parser(
        sub,
        "evaluate",
        "judge one agent action on a coordinator's gateway (or a region node)",
        target=COORDINATOR,
        timeout=10.0,
        description="Send one agent action to a coordinator's gateway (CoordinatorService/"
        "Evaluate, routed to a region node) or, with --node, to a region node itself, and "
        "print the verdict; or, with --actions, a file of them over one EvaluateStream. "
        "Exit status: 0 answered, 1 the call (or an action) failed, 2 a usage error, "
        "3 a decision at or above --fail-at.",
    )
    evaluate.add_argument(
        "text", nargs="?", metavar="TEXT", help="the action text; - reads it from stdin"
    )
    evaluate.add_argument(
        "--actions",
        metavar="FILE",
        help="evaluate a file of actions instead (- is stdin): a JSON AgentAction a line, "
        "sent over one EvaluateStream; the action flags fill in what a line leaves empty",
    )
    evaluate.add_argument(
        "--batch",
        type=parse_positive_int,
        default=512,
        help="most actions a stream message carries with --actions (512; at most 4096; "
        "fewer when large: a message is at most 4 MiB)",
    )
    evaluate.add_argument("--agent-id", default="cli", help="who acts (cli)")
    evaluate.add_argument("--action-type", default="", help="e.g. query, command, message")
    evaluate.add_argument("--intent", default="", help="what the agent says it is doing")
    _pairs(evaluate, "--context", "a context entry (repeat)")
    evaluate.add_argument("--request-id", default="", help="echoed in the answer")
    evaluate.add_argument(
        "--region", default="", help="region to evaluate in (coordinator only; default its own)"
    )
    evaluate.add_argument(
        "--stay-in-region",
        action="store_true",
        help="evaluate in --region (or the coordinator's local region) or not at all: "
        "never in another region (coordinator only)",
    )
    evaluate.add_argument(
        "--node", action="store_true", help="the target is a region node, not a coordinator"
    )
    evaluate.add_argument(
        "--fail-at",
        choices=FAIL_AT_CHOICES,
        help="exit with status 3 when the decision is this or more severe",
    )

    _client_parser(
        sub,
        "info",
        "what a region node is: identity, windows, model, stores and their backends",
        target=REGION_NODE,
        timeout=5.0,
    )

    ingest = _client_parser(
        sub,
        "ingest",
        "send observations from a file or stdin to a region node",
        target=REGION_NODE,
        timeout=60.0,
        description="Send the numbers of FILE (or stdin), separated by whitespace or "
        "commas, to a region node as observations of one series (Ingest, in batches of "
        "--batch-values), each at the time the node gets its batch. With --timed, each "
        "line is one observation with its own time, TIME VALUE or TIME,VALUE: Unix seconds "
        "(1796097600.25) or RFC 3339 (2026-12-01T04:00:00Z; without an offset, UTC), "
        "within the node's retention (see info) and at most 5 minutes ahead, to fill in "
        "past data. With --batch-id, batch N is PREFIX-N, so running the same "
        "command again applies only the batches the node has not applied (not with "
        "--stream). With --stream, values are sent as they arrive (input that stays open, "
        "e.g. tail -f).",
    )
    ingest.add_argument("metric", metavar="METRIC", help="the metric name")
    ingest.add_argument("file", nargs="?", default="-", metavar="FILE", help="- is stdin (-)")
    _pairs(ingest, "--label", "a label of the series (repeat)")
    ingest.add_argument(
        "--batch-values",
        type=parse_positive_int,
        default=10_000,
        help="values per message (10000; a message is at most the node's limit, 8 MiB: "
        "about a million values, half that with --timed)",
    )
    ingest.add_argument(
        "--timed",
        action="store_true",
        help="each line is TIME VALUE (Unix seconds or RFC 3339): the observation's own "
        "time, not the time its batch arrives",
    )
    ingest.add_argument("--batch-id", default="", metavar="PREFIX", help="batch id prefix")
    ingest.add_argument(
        "--stream",
        action="store_true",
        help="send values as they arrive, a batch (one Ingest call, a line for each) once "
        "--batch-values wait or --flush-after after the first of them, and at the end of "
        "the input; a token that is not a number stops it after the values before its "
        "line; Ctrl-C sends what waits and stops",
    )
    ingest.add_argument(
        "--flush-after",
        type=parse_duration_ns,
        default=1_000_000_000,
        metavar="DURATION",
        help="with --stream: the longest a value waits to be sent (1s)",
    )

    audit = _client_parser(
        sub,
        "audit",
        "search a region node's audit records (in-region data)",
        target=REGION_NODE,
        timeout=10.0,
        description="Search a region node's audit records (SearchAudit): every word of "
        "QUERY in the action text or stated intent (none: every record), ranked by "
        "relevance, else newest first; pages are fetched until --limit records.",
    )
    audit.add_argument("query", nargs="*", metavar="QUERY", help="words to find")
    audit.add_argument("--agent-id", default="", help="only this agent")
    audit.add_argument("--decision", choices=DECISION_CHOICES, help="only this decision")
    _range(audit)
    audit.add_argument("--min-risk", type=parse_unit_interval, help="only this risk or more")
    audit.add_argument(
        "--limit", type=parse_positive_int, default=50, help="most records to print (50)"
    )

    profile = _client_parser(
        sub,
        "profile",
        "an agent's risk profile on a region node (in-region data)",
        target=REGION_NODE,
        timeout=10.0,
    )
    profile.add_argument("agent_id", metavar="AGENT", help="the agent id")

    metrics = _client_parser(
        sub,
        "metrics",
        "a region node's raw metric rows, oldest first (in-region data)",
        target=REGION_NODE,
        timeout=10.0,
        description="Rows of a region node's time-series store (QueryMetrics): each "
        "evaluation's risk_score, with its agent, decision and action type, oldest first.",
    )
    metrics.add_argument("metric", nargs="?", metavar="METRIC", help="only this metric")
    metrics.add_argument("--agent-id", default="", help="only this agent")
    _range(metrics, since=_AN_HOUR_AGO, since_text="1h; 0 for all")
    metrics.add_argument(
        "--limit",
        type=bounded_int(QUERY_LIMIT_MAX),
        default=100,
        help=f"most rows to print (100; at most {QUERY_LIMIT_MAX:,})",
    )

    aggregate = _client_parser(
        sub,
        "aggregate",
        "one metric of a region node's time-series store per time bucket (in-region data)",
        target=REGION_NODE,
        timeout=10.0,
        description="METRIC's rows on a region node combined per time bucket "
        "(AggregateMetrics), buckets aligned to the Unix epoch; empty buckets are left out.",
    )
    aggregate.add_argument("metric", metavar="METRIC", help="the metric, e.g. risk_score")
    aggregate.add_argument(
        "--by", choices=AGGREGATION_CHOICES, default="avg", help="how to combine a bucket (avg)"
    )
    aggregate.add_argument(
        "--bucket", type=parse_proto_duration_ns, default=60_000_000_000, help="bucket width (1m)"
    )
    _range(aggregate, since=_AN_HOUR_AGO, since_text="1h", required=True)
    aggregate.add_argument("--agent-id", default="", help="only this agent")

    score = _client_parser(
        sub,
        "score",
        "score feature rows from a file or stdin on a region node's model",
        target=REGION_NODE,
        timeout=30.0,
        description="Score the feature rows of FILE (or stdin) with a region node's model "
        "(Score): a row a line, its numbers separated by whitespace or commas; blank lines "
        "and # comments are left out. A row's width must be the model's (nethical-mesh "
        "info names it).",
    )
    score.add_argument("file", nargs="?", default="-", metavar="FILE", help="- is stdin (-)")

    health = sub.add_parser("health", help="grpc.health.v1 Check: exit 0 only when SERVING")
    health.add_argument(
        "target", nargs="?", type=parse_target, help="HOST:PORT (or give it as --target)"
    )
    health.add_argument(
        "--target", dest="target_flag", type=parse_target, metavar="TARGET", help="HOST:PORT"
    )
    health.add_argument("--service", default="", help="service name ('' = the server)")
    health.add_argument("--timeout", type=parse_timeout_s, default=3.0, help="deadline in s (3)")
    health.add_argument(
        "--json",
        action="store_true",
        help="as the other commands take it: health always prints JSON (a line an answer)",
    )
    health.add_argument(
        "--watch",
        action="store_true",
        help="follow the status (Watch): a JSON line with its time at each change, "
        "UNREACHABLE while the server cannot be reached, until Ctrl-C (exit 0)",
    )
    add_client_arguments(health)
    _common(health)

    demo = sub.add_parser(
        "demo",
        help="an all-in-one mesh on loopback with live metrics",
        description="An all-in-one mesh on loopback: region nodes and a coordinator, each "
        "a process of its own, traffic streamed into every region, and a live table of "
        "global metrics. Its servers serve no Prometheus metrics: a port "
        f"{METRICS_PORT_ENV} sets is not passed on to them (one port cannot serve "
        "several processes); a value of it that is no port is still refused.",
    )
    demo.add_argument(
        "--regions", type=int, default=3, help="region node processes, at most 16 (3)"
    )
    demo.add_argument("--duration", type=float, default=30.0, help="seconds (30)")
    demo.add_argument(
        "--rate",
        type=int,
        default=200_000,
        help="observations per second per region, spread over its 3 metrics (200000)",
    )
    demo.add_argument("--refresh", type=float, default=1.0, help="seconds between tables (1)")
    demo.add_argument(
        "--seed", type=int, default=7, help="seed of the synthetic observations, 0 or more (7)"
    )
    _common(demo)
    return parser


class LogFormatter(logging.Formatter):
    """One line per record (a library's multi-line message is joined with " | "; a
    traceback, when one is logged, follows on its own lines), stamped in UTC, ISO 8601:
    ``2026-11-29T10:11:12.345Z INFO name: message``."""

    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if "\n" in record.message:
            parts = (p.strip() for p in record.message.splitlines())
            record.message = " | ".join(p for p in parts if p)
        return super().formatMessage(record)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if level.upper() == "DEBUG":
        # gRPC's own debug lines (one per call's event loop lookup) drown the mesh's
        logging.getLogger("grpc").setLevel(logging.INFO)


#: The exit status of a command whose reader went away (``… | head``): a shell's for a
#: program SIGPIPE ended, 128 + 13.
BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's own log lines (an INFO "Handshake failed" for a TLS mismatch, on stderr
    # beside the command's one line) only where asked for: read at gRPC's import
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        try:
            return _main(argv)
        finally:  # what waits in stdout's buffer: a reader gone shows here, not at exit
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C before the event loop runs (e.g. during imports)
        return 130
    except BrokenPipeError:  # stdout's reader stopped reading: nothing more to say
        _stdout_to_devnull()
        return BROKEN_PIPE_EXIT


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what waits in its
    buffer does not fail again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
    except ValueError as exc:  # a default read from the environment that does not parse
        print(f"nethical-mesh: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "health":
        if args.target and args.target_flag and args.target != args.target_flag:
            parser.error(f"health: two targets, {args.target} and --target {args.target_flag}")
        args.target = args.target or args.target_flag
        if not args.target:
            parser.error("health: a target is needed: HOST:PORT or --target HOST:PORT")
    if args.command == "ingest" and args.stream and args.batch_id:
        # a streamed batch ends when --flush-after passes: a run again would cut the input
        # elsewhere, and a batch PREFIX-N it skips as applied could hold values never sent
        parser.error(
            "ingest: --batch-id does not go with --stream (streamed batches end with time, "
            "so a second run would number other values alike and the node would skip them)"
        )
    if args.command in ("region", "coordinator"):
        from nethical_grpc.cli.processes import die_with_parent

        die_with_parent()
    _setup_logging(args.log_level)
    if args.command == "region":
        from nethical_grpc.cli.serve import run_region

        return _run(run_region(args))
    if args.command == "coordinator":
        from nethical_grpc.cli.serve import run_coordinator

        return _run(run_coordinator(args))
    if args.command in ("query", "regions", "health"):
        from nethical_grpc.cli import client_commands

        return _run(getattr(client_commands, f"run_{args.command}")(args))
    if args.command == "evaluate":
        from nethical_grpc.cli.evaluate_command import run_evaluate

        return _run(run_evaluate(args))
    if args.command in ("info", "ingest", "audit", "profile"):
        from nethical_grpc.cli import region_commands

        return _run(getattr(region_commands, f"run_{args.command}")(args))
    if args.command in ("metrics", "aggregate"):
        from nethical_grpc.cli import timeseries_commands

        return _run(getattr(timeseries_commands, f"run_{args.command}")(args))
    if args.command == "score":
        from nethical_grpc.cli.score_command import run_score

        return _run(run_score(args))
    if args.command == "demo":
        from nethical_grpc.cli.demo import run_demo

        return _run(run_demo(args))
    raise AssertionError(args.command)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(coro)
    return 130


if __name__ == "__main__":
    sys.exit(main())
