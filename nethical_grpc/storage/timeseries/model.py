"""Records of the time-series store and the validation every backend shares.

Everything a caller passes is checked here, before any backend sees it, so both backends
accept and refuse exactly the same input and a refused batch writes nothing. Every refusal
is a ``ValueError`` whose message starts with the offending field.

Times are datetimes (any zone; stored and returned in UTC, to the microsecond). A naive
datetime is taken as UTC, as ``datetime.utcnow()`` gives it and as the audit store does.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeAlias, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "EPOCH",
    "MAX_ABS_VALUE",
    "MAX_BATCH_DAYS",
    "MAX_JSON_BYTES",
    "MAX_LABELS_BYTES",
    "MAX_NAME_LEN",
    "MAX_PAYLOAD_BYTES",
    "MAX_QUERY_LIMIT",
    "MAX_SHORT_LEN",
    "MAX_WRITE_TIME",
    "MIN_WRITE_TIME",
    "US_PER_DAY",
    "WINDOW_COLUMNS",
    "WINDOW_WRITE_COLUMNS",
    "AggregateRow",
    "AuditRecord",
    "EventRecord",
    "JSONValue",
    "MetricColumns",
    "MetricPoint",
    "MetricRecord",
    "WindowFilter",
    "WindowSummaryRow",
    "canonical_labels",
    "check_limit",
    "check_name",
    "check_ns",
    "check_optional_name",
    "check_range",
    "check_text",
    "check_uuid",
    "check_value",
    "check_window_rows",
    "check_write_times",
    "datetime_from_us",
    "dump_json",
    "load_json_text",
    "metric_columns",
    "metric_rows_columns",
    "parse_labels",
    "series_columns",
    "to_us",
    "window_params",
    "window_rows",
]

JSONValue: TypeAlias = Any
"""A JSON-serialisable value: dict, list, str, int, finite float, bool or None."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_DAY = 86_400_000_000

MAX_NAME_LEN = 256
"""Longest region id, agent id, metric name, event type, action id, instance id…"""
MAX_SHORT_LEN = 64
"""Longest severity or decision."""
MAX_JSON_BYTES = 64 * 1024
"""Largest serialised metadata, event data or violation list (UTF-8 bytes)."""
MAX_LABELS_BYTES = 8 * 1024
"""Largest canonical label set of a window summary (UTF-8 bytes of its JSON)."""
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
"""Largest serialised window summary."""
MAX_QUERY_LIMIT = 100_000
"""Most rows one query may return."""
MAX_BATCH_DAYS = 64
"""Most distinct UTC days one write may touch (each day is a partition on PostgreSQL)."""
MAX_ABS_VALUE = 1e100
"""Largest magnitude of a metric value, the bound of every value in the mesh (the RPC
boundary's, ``nethical_grpc.validation``, is this one). No sum of such
values can overflow: PostgreSQL refuses a float sum that does (so a write's rollup merge,
or an aggregate, failed) where SQLite makes it infinite."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_ONE_US = timedelta(microseconds=1)
MIN_WRITE_TIME = datetime(1900, 1, 1, tzinfo=UTC)
"""Earliest time a row may carry."""
MAX_WRITE_TIME = datetime(9999, 12, 31, tzinfo=UTC)
"""Rows must be before this (a day partition's upper bound must still be a datetime)."""
_MIN_WRITE_US = (MIN_WRITE_TIME - EPOCH) // _ONE_US
_MAX_WRITE_US = (MAX_WRITE_TIME - EPOCH) // _ONE_US


# --------------------------------------------------------------------------- records
#
# Rows that come and go in bulk are named tuples: immutable, unpackable and several times
# cheaper to build than frozen dataclasses (a query returns up to 100,000 of them).


class MetricPoint(NamedTuple):
    """One metric observation to insert. ``region_id=None`` means the store's region;
    ``timestamp=None`` means now."""

    agent_id: str
    metric_name: str
    metric_value: float
    timestamp: datetime | None = None
    region_id: str | None = None
    metadata: Mapping[str, JSONValue] | None = None


class MetricRecord(NamedTuple):
    """One stored metric observation, as queries return it (``timestamp`` in UTC)."""

    region_id: str
    agent_id: str
    metric_name: str
    metric_value: float
    timestamp: datetime
    metadata: dict[str, JSONValue] | None = None


class AggregateRow(NamedTuple):
    """One time bucket of :meth:`aggregate_metrics`: ``(bucket_start, value, count)``.

    ``bucket_start`` is the bucket's start in UTC (buckets are aligned to the Unix epoch),
    ``value`` the requested aggregate, ``count`` the number of observations in the bucket
    (the field shadows ``tuple.count``, which has no use on a row).
    """

    bucket_start: datetime
    value: float
    count: int  # type: ignore[assignment]


class EventRecord(NamedTuple):
    """One stored event."""

    event_id: str
    region_id: str
    event_type: str
    agent_id: str
    severity: str
    data: dict[str, JSONValue] | None
    timestamp: datetime


class AuditRecord(NamedTuple):
    """One stored audit-log entry."""

    audit_id: str
    region_id: str
    action_id: str
    agent_id: str
    decision: str
    violations: list[JSONValue]
    metadata: dict[str, JSONValue] | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class WindowSummaryRow:
    """A region node's serialised summary of one series over one window.

    The key is (``region_id``, ``instance_id``, ``metric``, ``labels``,
    ``window_start_ns``); labels are compared as sets of pairs (their order does not
    matter). ``payload`` is opaque to the store; ``count`` is the number of observations it
    summarises (for listings that should not decode payloads). Times are Unix nanoseconds.

    ``change_seq`` is set by the store, not by the writer: each upsert stamps its rows
    with the region's next change number, in commit order (an upsert that commits later
    has a larger one), so a reader that saw changes up to ``n`` gets every later one with
    ``changed_after=n`` (rows written before the column existed have 0).
    """

    region_id: str
    instance_id: str
    metric: str
    labels: Mapping[str, str]
    window_start_ns: int
    window_ns: int
    payload: bytes
    count: int = 0
    change_seq: int = 0


#: The columns a window-summary load reads, in :func:`window_rows`' order.
WINDOW_COLUMNS = (
    "region_id, instance_id, metric, labels, window_start_ns, window_ns, payload, count, change_seq"
)


#: The columns a window-summary upsert writes, in :func:`window_params`' order.
WINDOW_WRITE_COLUMNS = (
    "region_id, instance_id, metric, labels, window_start_ns, window_ns, count, payload, change_seq"
)


def window_params(
    rows: Sequence[tuple[WindowSummaryRow, str]], seqs: Mapping[str, int]
) -> list[tuple[Any, ...]]:
    """The parameters of :data:`WINDOW_WRITE_COLUMNS` for checked rows (each with its
    canonical labels), each stamped with its region's change number from ``seqs``."""
    return [
        (
            r.region_id,
            r.instance_id,
            r.metric,
            labels,
            r.window_start_ns,
            r.window_ns,
            r.count,
            r.payload,
            seqs[r.region_id],
        )
        for r, labels in rows
    ]


def window_rows(rows: Iterable[Sequence[Any]]) -> list[WindowSummaryRow]:
    """Rows of :data:`WINDOW_COLUMNS` as read from a backend. A load holds each series'
    label text once per window (a day of 10 s windows: 8,640 times), so each distinct
    text is parsed once and every row gets its own copy of the labels."""
    parsed: dict[str, dict[str, str]] = {}
    out = []
    for r in rows:
        labels = parsed.get(r[3])
        if labels is None:
            labels = parsed[r[3]] = parse_labels(r[3])
        out.append(
            WindowSummaryRow(r[0], r[1], r[2], dict(labels), r[4], r[5], bytes(r[6]), r[7], r[8])
        )
    return out


@dataclass(frozen=True, slots=True)
class WindowFilter:
    """Which stored window summaries of a region a load returns (checked values; None:
    no bound): see :meth:`TimeSeriesStore.load_window_summaries`."""

    since_ns: int | None = None
    until_ns: int | None = None
    instance_id: str | None = None
    changed_after: int | None = None

    def conditions(self, param: Callable[[str], str]) -> tuple[list[str], dict[str, Any]]:
        """The SQL conditions past ``region_id``'s and their named parameters, with
        ``param(name)`` the backend's placeholder for a parameter."""
        where: list[str] = []
        params: dict[str, Any] = {}
        for name, value, condition in (
            ("since", self.since_ns, "window_start_ns >= {}"),
            ("until", self.until_ns, "window_start_ns < {}"),
            ("instance", self.instance_id, "instance_id = {}"),
            ("after", self.changed_after, "change_seq > {}"),
        ):
            if value is not None:
                params[name] = value
                where.append(condition.format(param(name)))
        return where, params


@dataclass(frozen=True, slots=True)
class MetricColumns:
    """A validated batch of metric observations in columns (what backends write).

    ``ts_us`` holds Unix microseconds (int64), ``values`` float64; the string columns and
    ``metadata`` (serialised JSON or None) have one entry per row.
    """

    region_ids: list[str]
    agent_ids: list[str]
    metric_names: list[str]
    values: npt.NDArray[np.float64]
    ts_us: npt.NDArray[np.int64]
    metadata: list[str | None]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def rows(self) -> list[tuple[str, int, str, str, float, str | None]]:
        """The batch as rows ``(region_id, ts_us, metric_name, agent_id, value,
        metadata)``, the column order of the backends' ``metrics`` tables."""
        return list(
            zip(
                self.region_ids,
                self.ts_us.tolist(),
                self.metric_names,
                self.agent_ids,
                self.values.tolist(),
                self.metadata,
                strict=True,
            )
        )


# --------------------------------------------------------------------------- checks


def check_text(
    field_name: str, value: object, *, max_len: int = MAX_NAME_LEN, allow_empty: bool = False
) -> str:
    """``value`` if it is a string of at most ``max_len`` characters with no NUL
    (PostgreSQL cannot store one), non-empty unless ``allow_empty``; else ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"{field_name}: must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{field_name}: must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{field_name}: longer than {max_len} characters ({len(value)})")
    if "\x00" in value:
        raise ValueError(f"{field_name}: must not contain NUL characters")
    if not value.isascii():
        _check_utf8(field_name, value)
    return value


def _check_utf8(field_name: str, text: str) -> bytes:
    """``text`` in UTF-8; ``ValueError`` naming the field for text that has none (a lone
    surrogate, e.g. from ``surrogateescape`` decoding), which no database can store."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field_name}: not valid Unicode (lone surrogate {text[exc.start]!r} at "
            f"position {exc.start})"
        ) from None


def check_name(field_name: str, value: object) -> str:
    """A non-empty identifier-like string (ids, names, types) of at most 256 characters."""
    return check_text(field_name, value)


def check_optional_name(field_name: str, value: object) -> str | None:
    """Like :func:`check_name`, but ``None`` (no filter) passes through."""
    return None if value is None else check_text(field_name, value, allow_empty=True)


def to_us(field_name: str, value: object) -> int:
    """Unix microseconds of a datetime (exact; sub-µs digits are dropped). A naive one is
    taken as UTC (``datetime.utcnow()``), as the audit store does.

    ``ValueError`` for anything that is not a datetime.
    """
    if not isinstance(value, datetime):
        raise ValueError(f"{field_name}: must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _ONE_US


def datetime_from_us(us: int) -> datetime:
    """The UTC datetime of ``us`` Unix microseconds."""
    return EPOCH + timedelta(microseconds=us)


def check_range(start: datetime | None, end: datetime | None) -> tuple[int | None, int | None]:
    """``(start_us, end_us)`` of a half-open range ``[start, end)``; either may be open.

    ``ValueError`` when ``start`` is after ``end`` (an equal pair is an empty range). Bounds
    are clamped to the writable range (no row lies outside it), so a bound like
    ``datetime.max`` never overflows later arithmetic.
    """
    start_us = None if start is None else to_us("start_time", start)
    end_us = None if end is None else to_us("end_time", end)
    if start_us is not None and end_us is not None and start_us > end_us:
        raise ValueError("end_time: before start_time (inverted time range)")
    if start_us is not None:
        start_us = min(max(start_us, _MIN_WRITE_US), _MAX_WRITE_US)
    if end_us is not None:
        end_us = min(max(end_us, _MIN_WRITE_US), _MAX_WRITE_US)
    return start_us, end_us


def check_limit(limit: object) -> int:
    """``limit`` if it is an int in ``[1, MAX_QUERY_LIMIT]``; else ``ValueError``."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValueError(f"limit: must be an integer, got {type(limit).__name__}")
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise ValueError(f"limit: must be between 1 and {MAX_QUERY_LIMIT}, got {limit}")
    return limit


def check_value(field_name: str, value: object) -> float:
    """``value`` as a finite float of magnitude at most :data:`MAX_ABS_VALUE` (ints
    accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{field_name}: must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{field_name}: must be within ±{MAX_ABS_VALUE:g}") from None
    if not math.isfinite(out):
        raise ValueError(f"{field_name}: must be finite, got {out}")
    if abs(out) > MAX_ABS_VALUE:
        raise ValueError(f"{field_name}: must be within ±{MAX_ABS_VALUE:g}, got {out:g}")
    return out


def _check_json_strings(field_name: str, value: JSONValue, depth: int = 0) -> None:
    if depth > 32:
        raise ValueError(f"{field_name}: nested deeper than 32 levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{field_name}: must not contain NUL characters")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{field_name}: object keys must be strings")
            if "\x00" in key:
                raise ValueError(f"{field_name}: must not contain NUL characters")
            _check_json_strings(field_name, item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json_strings(field_name, item, depth + 1)


def dump_json(field_name: str, value: JSONValue, *, kind: type = dict) -> str:
    """Serialise ``value`` (a ``kind``: dict or list) to compact JSON with sorted keys.

    ``ValueError`` for values JSON cannot hold (NaN, infinity, sets, objects…), NUL
    characters (PostgreSQL refuses them) and more than ``MAX_JSON_BYTES`` of output.
    """
    expected = Mapping if kind is dict else (list, tuple)
    if not isinstance(value, expected):
        raise ValueError(
            f"{field_name}: must be a {'mapping' if kind is dict else 'list'}, "
            f"got {type(value).__name__}"
        )
    _check_json_strings(field_name, value)
    try:
        text = json.dumps(
            dict(value) if kind is dict else list(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field_name}: not JSON-serialisable ({exc})") from None
    if len(_check_utf8(field_name, text)) > MAX_JSON_BYTES:
        raise ValueError(f"{field_name}: larger than {MAX_JSON_BYTES} bytes as JSON")
    return text


def check_uuid(field_name: str, value: object) -> str:
    """The canonical (lower-case, hyphenated) text of a UUID given as text or ``UUID``."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{field_name}: must be a UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{field_name}: {value[:64]!r} is not a UUID") from None


def check_write_times(ts_us: npt.NDArray[np.int64], where: str = "timestamp") -> None:
    """``ValueError`` unless every time to be written lies in ``[MIN_WRITE_TIME,
    MAX_WRITE_TIME)`` and the batch spans at most ``MAX_BATCH_DAYS`` distinct UTC days.

    ``where`` names the field; a ``{}`` in it is replaced by the first bad row's index.
    """
    if ts_us.size == 0:
        return
    bad_mask = (ts_us < _MIN_WRITE_US) | (ts_us >= _MAX_WRITE_US)
    if bad_mask.any():
        i = int(np.argmax(bad_mask))
        raise ValueError(
            f"{where.format(i)}: {datetime_from_us(int(ts_us[i])).isoformat()} is outside "
            f"[{MIN_WRITE_TIME.isoformat()}, {MAX_WRITE_TIME.isoformat()})"
        )
    days = np.unique(ts_us // US_PER_DAY)
    if days.size > MAX_BATCH_DAYS:
        raise ValueError(
            f"{where.format('*')}: the batch spans {days.size} UTC days; at most {MAX_BATCH_DAYS} "
            "per write (split it)"
        )


# --------------------------------------------------------------------------- labels


def labels_text(labels: Mapping[str, str]) -> str:
    """A label set as the stores keep it: JSON, keys sorted, compact, not ASCII-escaped
    (no checks: see :func:`canonical_labels`)."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_labels(field_name: str, labels: object) -> str:
    """The canonical JSON text of a label set: keys sorted, compact, UTF-8.

    Two dicts with the same pairs give the same text, whatever their order. ``ValueError``
    for non-string keys or values, NUL characters, or more than ``MAX_LABELS_BYTES``.
    """
    if not isinstance(labels, Mapping):
        raise ValueError(f"{field_name}: must be a mapping of strings to strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{field_name}: keys and values must be strings")
        if "\x00" in key or "\x00" in value:
            raise ValueError(f"{field_name}: must not contain NUL characters")
    text = labels_text(labels)
    if len(_check_utf8(field_name, text)) > MAX_LABELS_BYTES:
        raise ValueError(f"{field_name}: larger than {MAX_LABELS_BYTES} bytes as JSON")
    return text


def parse_labels(text: str) -> dict[str, str]:
    """The label dict of a canonical label text."""
    out: dict[str, str] = json.loads(text)
    return out


# --------------------------------------------------------------------------- batches


def metric_columns(
    points: Sequence[MetricPoint], default_region: str, now_us: int
) -> MetricColumns:
    """Validate every point, then return the batch in columns.

    Nothing is returned (``ValueError`` instead) if any point is bad: the message names its
    index, e.g. ``points[17].metric_value: must be finite, got nan``.
    """
    n = len(points)
    region_ids: list[str] = [default_region] * n
    agent_ids: list[str] = [""] * n
    names: list[str] = [""] * n
    metadata: list[str | None] = [None] * n
    values: list[float] = [0.0] * n
    stamps: list[int] = [now_us] * n
    # points often share one metadata mapping (a batch of one series, or of a few label
    # sets): each distinct mapping object is checked and serialised once per batch
    dumped: dict[int, tuple[Mapping[str, JSONValue], str]] = {}
    for i, p in enumerate(points):
        if not isinstance(p, MetricPoint):
            raise ValueError(f"points[{i}]: must be a MetricPoint, got {type(p).__name__}")
        # The common case is checked inline (this loop is the row API's hot path); anything
        # unusual goes through the full checks, which raise the precise error.
        try:
            if p.region_id is not None:
                region_ids[i] = check_name("region_id", p.region_id)
            agent = p.agent_id
            if (
                type(agent) is not str
                or len(agent) > MAX_NAME_LEN
                or "\x00" in agent
                or not agent.isascii()
            ):
                agent = check_text("agent_id", agent, allow_empty=True)
            agent_ids[i] = agent
            name = p.metric_name
            if (
                type(name) is not str
                or not 0 < len(name) <= MAX_NAME_LEN
                or "\x00" in name
                or not name.isascii()
            ):
                name = check_name("metric_name", name)
            names[i] = name
            value = p.metric_value
            # NaN fails both comparisons
            if type(value) is not float or not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
                value = check_value("metric_value", value)
            values[i] = value
            ts = p.timestamp
            if ts is not None:
                if type(ts) is datetime and ts.utcoffset() is not None:
                    stamps[i] = (ts - EPOCH) // _ONE_US
                else:
                    stamps[i] = to_us("timestamp", ts)
            meta = p.metadata
            if meta is not None:
                known = dumped.get(id(meta))
                if known is None:
                    # the mapping is held in `dumped`, so its id is not reused meanwhile
                    known = dumped[id(meta)] = (meta, dump_json("metadata", meta))
                metadata[i] = known[1]
        except ValueError as exc:
            raise ValueError(f"points[{i}].{exc}") from None
    ts_us = np.array(stamps, dtype=np.int64)
    check_write_times(ts_us, "points[{}].timestamp")
    # -0.0 is stored as 0.0: SQLite keeps a whole REAL as an integer, so it returns 0.0
    # where PostgreSQL kept the sign (a query or a min of the same rows differed)
    vals = np.array(values, dtype=np.float64)
    vals += 0.0
    return MetricColumns(region_ids, agent_ids, names, vals, ts_us, metadata)


def series_columns(
    *,
    region_id: str,
    agent_id: str,
    metric_name: str,
    values: object,
    timestamps_ns: object,
    metadata: str | None,
    max_rows: int | None = None,
) -> MetricColumns:
    """Validate one series' values (float array) and Unix-ns timestamps (int array or one
    int for all), vectorised, and return it in columns (timestamps floored to µs).

    ``max_rows``: most values accepted (``ValueError`` beyond, before any per-row column
    is built)."""
    try:
        vals = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"values: must be numbers within ±{MAX_ABS_VALUE:g} ({exc})") from None
    if vals.ndim != 1:
        raise ValueError("values: must be one-dimensional")
    if max_rows is not None and vals.size > max_rows:
        raise ValueError(f"values: at most {max_rows} per call, got {vals.size}")
    in_range = np.abs(vals) <= MAX_ABS_VALUE  # False for NaN too
    if not in_range.all():
        bad = int(np.argmin(in_range))
        if not math.isfinite(vals[bad]):
            raise ValueError(f"values[{bad}]: must be finite, got {vals[bad]}")
        raise ValueError(f"values[{bad}]: must be within ±{MAX_ABS_VALUE:g}, got {vals[bad]:g}")
    ts_arr = np.asarray(timestamps_ns)
    if ts_arr.ndim == 0:
        ts_arr = np.full(vals.shape, ts_arr)
    if ts_arr.shape != vals.shape:
        raise ValueError(
            f"timestamps_ns: {ts_arr.size} timestamps for {vals.size} values (must match)"
        )
    if ts_arr.size and not np.issubdtype(ts_arr.dtype, np.integer):
        raise ValueError("timestamps_ns: must be integers (Unix nanoseconds)")
    if np.issubdtype(ts_arr.dtype, np.unsignedinteger):
        # NumPy makes ints in [2**63, 2**64) uint64: cast, they would wrap to before 1970
        beyond = ts_arr > _INT64_MAX
        if beyond.any():
            bad = int(np.argmax(beyond))
            raise ValueError(
                f"timestamps_ns[{bad}]: {int(ts_arr[bad])} is beyond every writable time "
                f"(before {MAX_WRITE_TIME.isoformat()})"
            )
    ts_ns = ts_arr.astype(np.int64, copy=False)
    ts_us = np.floor_divide(ts_ns, 1000)
    check_write_times(ts_us, "timestamps_ns[{}]")
    n = int(vals.size)
    return MetricColumns(
        [region_id] * n,
        [agent_id] * n,
        [metric_name] * n,
        vals + 0.0,  # a copy, with -0.0 as 0.0 (see metric_columns)
        ts_us,
        [metadata] * n,
    )


def metric_rows_columns(
    *,
    region_id: str,
    metric_name: str,
    values: object,
    timestamps_ns: object,
    agent_ids: Sequence[str],
    metadata: Sequence[Mapping[str, JSONValue] | None] | None,
    max_rows: int | None = None,
) -> MetricColumns:
    """:func:`series_columns` with an agent id and a metadata mapping (or ``None``) a row:
    one metric's observations from many agents, checked a column at a time. The agent
    ids pass or fail as :func:`check_text` would pass or fail each (empty allowed), and
    each distinct mapping object is serialised once (:func:`dump_json`); ``ValueError``
    naming the first bad entry, e.g. ``agent_ids[3]: must not contain NUL characters``."""
    cols = series_columns(
        region_id=region_id,
        agent_id="",
        metric_name=metric_name,
        values=values,
        timestamps_ns=timestamps_ns,
        metadata=None,
        max_rows=max_rows,
    )
    n = len(cols)
    agents = text_column("agent_ids", agent_ids, n)
    metas = cols.metadata if metadata is None else json_column("metadata", metadata, n)
    return replace(cols, agent_ids=agents, metadata=metas)


def text_column(field_name: str, values: Sequence[object], n: int) -> list[str]:
    """``values`` as a list of ``n`` strings that :func:`check_text` passes (empty
    allowed), checked together: their types by a set, the longest by ``max``, NUL and
    non-ASCII text once over the joined column. Only a column failing that is checked
    entry by entry, for the precise error (``field_name[i]: …``) or, when its only
    unusual entries are valid non-ASCII text, to pass it."""
    if isinstance(values, str | bytes):  # a string is a sequence too: of its characters
        raise ValueError(f"{field_name}: a sequence of strings, one a value, not one string")
    column = list(values)
    if len(column) != n:
        raise ValueError(f"{field_name}: {len(column)} entries for {n} values (must match)")
    if not column:
        return []
    if set(map(type, column)) == {str}:
        texts = cast(list[str], column)
        if max(map(len, texts)) <= MAX_NAME_LEN:
            joined = "".join(texts)
            if joined.isascii() and "\x00" not in joined:
                return texts
    return [
        check_text(f"{field_name}[{i}]", value, allow_empty=True) for i, value in enumerate(column)
    ]


def json_column(
    field_name: str, values: Sequence[Mapping[str, JSONValue] | None], n: int
) -> list[str | None]:
    """``values`` (mappings or ``None``) as their JSON texts (:func:`dump_json`), each
    distinct mapping object serialised once and its text shared by every row holding it;
    ``ValueError`` naming the first row of a bad one (``field_name[i]: …``)."""
    if isinstance(values, Mapping):  # a mapping is iterable too: of its keys
        raise ValueError(f"{field_name}: a sequence of mappings, one a value, not one mapping")
    column = list(values)
    if len(column) != n:
        raise ValueError(f"{field_name}: {len(column)} entries for {n} values (must match)")
    ids = list(map(id, column))
    # each distinct object's first row (the column holds every object meanwhile, so no
    # id is reused for another)
    first = dict(zip(reversed(ids), range(n - 1, -1, -1), strict=True))
    texts = {
        key: None if column[i] is None else dump_json(f"{field_name}[{i}]", column[i])
        for key, i in sorted(first.items(), key=lambda item: item[1])
    }
    return list(map(texts.__getitem__, ids))


def check_window_rows(rows: Sequence[WindowSummaryRow]) -> list[tuple[WindowSummaryRow, str]]:
    """Validate every row; return ``(row, canonical label text)`` pairs, a later duplicate
    of a key replacing the earlier one (so one upsert never touches a key twice).
    """
    keyed: dict[tuple[str, str, str, str, int], tuple[WindowSummaryRow, str]] = {}
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, WindowSummaryRow):
            raise ValueError(f"{where}: must be a WindowSummaryRow, got {type(row).__name__}")
        check_name(f"{where}.region_id", row.region_id)
        check_name(f"{where}.instance_id", row.instance_id)
        check_name(f"{where}.metric", row.metric)
        labels = canonical_labels(f"{where}.labels", row.labels)
        check_ns(f"{where}.window_start_ns", row.window_start_ns)
        check_ns(f"{where}.window_ns", row.window_ns)
        check_ns(f"{where}.count", row.count)
        if row.window_ns <= 0:
            raise ValueError(f"{where}.window_ns: must be positive, got {row.window_ns}")
        if row.count < 0:
            raise ValueError(f"{where}.count: must not be negative, got {row.count}")
        if not isinstance(row.payload, bytes | bytearray | memoryview):
            raise ValueError(f"{where}.payload: must be bytes, got {type(row.payload).__name__}")
        payload = bytes(row.payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"{where}.payload: larger than {MAX_PAYLOAD_BYTES} bytes")
        key = (row.region_id, row.instance_id, row.metric, labels, row.window_start_ns)
        keyed[key] = (
            WindowSummaryRow(
                row.region_id,
                row.instance_id,
                row.metric,
                dict(row.labels),
                row.window_start_ns,
                row.window_ns,
                payload,
                row.count,
            ),
            labels,
        )
    return list(keyed.values())


#: A stored window summary's key and the change number it was loaded with: (region,
#: instance, metric, canonical label text, window start, change number).
WindowKey = tuple[str, str, str, str, int, int]


def window_keys(rows: Sequence[WindowSummaryRow]) -> list[WindowKey]:
    """Validate the keys (and change numbers) of loaded rows for a delete; return them
    without duplicates, in ``rows``' order. Payloads, counts and widths are not looked at.
    """
    keys: dict[WindowKey, None] = {}
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, WindowSummaryRow):
            raise ValueError(f"{where}: must be a WindowSummaryRow, got {type(row).__name__}")
        key = (
            check_name(f"{where}.region_id", row.region_id),
            check_name(f"{where}.instance_id", row.instance_id),
            check_name(f"{where}.metric", row.metric),
            canonical_labels(f"{where}.labels", row.labels),
            check_ns(f"{where}.window_start_ns", row.window_start_ns),
            check_ns(f"{where}.change_seq", row.change_seq),
        )
        keys[key] = None
    return list(keys)


def check_ns(field_name: str, value: object) -> int:
    """``value`` if it is a 64-bit integer; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field_name}: must be an integer, got {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{field_name}: out of the 64-bit range")
    return value


def load_json_text(text: str | None) -> Any:
    """The value of stored JSON text (``None`` stays ``None``)."""
    return None if text is None else json.loads(text)
