"""Audit records, search queries, result pages and statistics, with their validation.

Everything here is backend-neutral: both audit stores (SQLite FTS5 and Elasticsearch) take
and return these types, and every rule below is checked before a backend is touched, so a
rejected call writes nothing.  Every rejection is a ``ValueError`` with a message that names
the field (the RPC layer maps it to ``INVALID_ARGUMENT``).

Limits (UTF-8 bytes unless stated)
----------------------------------
* ``action_id``: 1-128 characters from ``[A-Za-z0-9_.:@/+=-]``; generated (32 hex digits
  of a random UUID) when not given.  A record indexed twice under one id is stored once.
* ``agent_id``: 1-256 characters, no control characters, not blank.
* ``region_id``: 1-64 characters from ``[A-Za-z0-9_.-]``, or empty on a record meaning
  "the store's region".
* ``action_text`` and ``stated_intent``: at most :data:`MAX_TEXT_BYTES` (64 KiB) each;
  ``action_type`` at most 128 characters.
* ``violations``: at most :data:`MAX_VIOLATIONS`; type 1-64 characters, severity 1-5,
  confidence in ``[0, 1]``, message at most 1 KiB.
* ``risk_score`` in ``[0, 1]`` (NaN rejected).
* ``timestamp``: an aware ``datetime`` (a naive one is taken as UTC), kept to the
  microsecond, between 1970-01-01 and 2262-01-01 UTC (the range of Elasticsearch's
  ``date_nanos``).

Full-text semantics (both backends)
-----------------------------------
Query text is never parsed as a query language.  :func:`query_terms` splits it into
*terms*, the maximal runs of letters and digits, with the combining marks among them
(anything else, including ``"``, ``*``, ``(``, ``:``, ``_`` and ``-``, only separates
terms), lower-cased and de-duplicated.  A record matches when every term occurs in its
``stated_intent`` or its ``action_text`` (each term in either field).  Matching ignores
case and diacritics (``Café`` matches ``cafe``).  Text with no terms (``None``, ``""``,
``"***"``) adds no full-text condition.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.validation import utf8_length

__all__ = [
    "DECISIONS",
    "MAX_PAGE_SIZE",
    "MAX_QUERY_TERMS",
    "MAX_QUERY_TEXT_CHARS",
    "MAX_TEXT_BYTES",
    "MAX_VIOLATIONS",
    "AuditFilter",
    "AuditHit",
    "AuditRecord",
    "AuditStatistics",
    "AuditViolation",
    "Decision",
    "IndexResult",
    "SearchOrder",
    "SearchPage",
    "SearchQuery",
    "check_region_id",
    "datetime_from_us",
    "dedupe_records",
    "fold_token",
    "parse_decision",
    "query_terms",
    "record_from_fields",
    "text_tokens",
    "to_utc_us",
]

#: Largest ``action_text`` / ``stated_intent`` of a record, in UTF-8 bytes (64 KiB each).
MAX_TEXT_BYTES: Final = 64 * 1024
#: Most violations one record may carry.
MAX_VIOLATIONS: Final = 64
#: Longest violation message, in UTF-8 bytes.
MAX_VIOLATION_MESSAGE_BYTES: Final = 1024
#: Longest query text, in characters, and most distinct terms in it.
MAX_QUERY_TEXT_CHARS: Final = 1024
MAX_QUERY_TERMS: Final = 32
#: Largest page a search returns; the default page size.
MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 100

#: Every decision, from least to most severe (the order of statistics' counts).
DECISIONS: Final[tuple[Decision, ...]] = tuple(Decision)

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,128}")
_REGION_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: For ASCII text, :func:`_term_re` over the lower-cased text as a byte table: letters
#: lower-cased, digits kept, every other byte a space. ``bytes.translate`` with it and
#: ``split()`` give the same tokens at about a quarter of the regular expression's cost
#: (1.3 against 4.9 µs for a record's 74 characters on average, an ad-hoc timing): every
#: audit record's text is tokenised on the index writer's thread, holding the
#: interpreter lock.
_ASCII_TERM_BYTES: Final = bytes(
    ord(chr(c).lower()) if c < 128 and chr(c).isalnum() else ord(" ") for c in range(256)
)
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
#: Storable timestamps, as microseconds since the epoch: [MIN_TIMESTAMP_US, MAX_TIMESTAMP_US).
MIN_TIMESTAMP_US: Final = 0
MAX_TIMESTAMP_US: Final = int(
    (datetime(2262, 1, 1, tzinfo=UTC) - _EPOCH) / timedelta(microseconds=1)
)


class SearchOrder(StrEnum):
    """Order of search hits.

    ``RELEVANCE``: score descending (Okapi BM25 of the terms: computed by the SQLite
    backend as its module documents, Lucene's ``_score`` in Elasticsearch, so scores and
    the order among different scores differ between backends), then timestamp
    descending, then ``action_id`` descending (byte order).  Without terms every score is
    equal, so a query without terms always uses ``NEWEST``: timestamp descending, then
    ``action_id`` descending (identical on every backend).
    """

    RELEVANCE = "relevance"
    NEWEST = "newest"


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    f = float(value)
    if not 0.0 <= f <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return f


def _check_agent_id(name: str, value: object) -> str:
    text = _check_str(name, value)
    if not text.strip():
        raise ValueError(f"{name} must not be empty")
    if len(text) > 256:
        raise ValueError(f"{name} is {len(text)} characters, more than 256")
    if _CONTROL_RE.search(text):
        raise ValueError(f"{name} must not contain control characters")
    return text


def check_region_id(name: str, value: object, *, allow_empty: bool) -> str:
    """``value`` if it is a valid region id (or empty, when allowed); ``ValueError`` if not."""
    text = _check_str(name, value)
    if not text and allow_empty:
        return text
    if not _REGION_RE.fullmatch(text):
        raise ValueError(
            f"{name} {text[:64]!r} is not valid: 1-64 characters from letters, digits, '_', "
            "'.' and '-'"
        )
    return text


def parse_decision(value: object, name: str = "decision") -> Decision:
    """``value`` (a :class:`Decision` or its name, any case) as a :class:`Decision`.

    ``ValueError`` for anything else, listing the accepted values.
    """
    if isinstance(value, Decision):
        return value
    if isinstance(value, str):
        try:
            return Decision(value.strip().upper())
        except ValueError:
            pass
    accepted = ", ".join(d.value for d in DECISIONS)
    raise ValueError(f"{name} must be one of {accepted}; got {value!r}")


def to_utc_us(value: object, name: str) -> int:
    """Microseconds since the Unix epoch of ``value``, an aware or naive (= UTC) datetime."""
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(value).__name__}")
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // _ONE_US


def datetime_from_us(us: int) -> datetime:
    """The aware UTC datetime ``us`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def fold_token(token: str) -> str:
    """``token`` without diacritics (``"café"`` → ``"cafe"``), as full-text matching
    compares terms; ASCII tokens are returned as they are."""
    if token.isascii():
        return token
    decomposed = unicodedata.normalize("NFD", token)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _mark_class(codepoints: Iterable[int]) -> str:
    """A regular-expression character class of the combining marks among ``codepoints``."""
    ranges: list[tuple[int, int]] = []
    for cp in codepoints:
        if unicodedata.category(chr(cp))[0] == "M":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]"


@functools.cache
def _term_re() -> re.Pattern[str]:
    """A term of non-ASCII text: a letter or digit, then letters, digits and combining
    marks.  ``[^\\W_]+`` alone split a word at each mark ("résumé" written decomposed,
    Yoruba "ọ̀rọ̀"), where the full-text index keeps it whole: the query found nothing.

    Marks are looked for only where a run of letters ends, and those past the BMP (a
    class of their own, slow to test) only behind a character past it: about the cost of
    ``[^\\W_]+``.  Made on first use (collecting the marks takes about 25 ms)."""
    bmp = _mark_class(range(0x10000))
    astral = _mark_class(itertools.chain(range(0x10000, 0x20000), range(0xE0000, 0xE1000)))
    return re.compile(rf"[^\W_]+(?:{bmp}+[^\W_]*|[\U00010000-\U0010ffff](?<={astral})[^\W_]*)*")


def _terms_in_order(text: str) -> list[str]:
    """The lower-cased runs of letters and digits (and the combining marks among them) of
    ``text``, in order, repeats kept."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_TERM_BYTES).decode("ascii").split()
    # found first, then lower-cased: lower-casing can add a combining mark ("İ" becomes
    # "i" and a dot above)
    return [term.lower() for term in _term_re().findall(text)]


def text_tokens(text: str) -> list[str]:
    """The tokens of a record's text for ranking statistics (document length, term and
    document frequencies): lower-cased runs of letters and digits without diacritics, in
    order, repeats kept."""
    tokens = _terms_in_order(text)
    if text.isascii():
        return tokens
    return [fold_token(t) for t in tokens]


def query_terms(text: str | None) -> tuple[str, ...]:
    """The search terms of ``text``: runs of letters/digits, lower-cased, de-duplicated
    in first-seen order (see the module docstring).  ``()`` for ``None`` or no terms.

    ``ValueError`` when ``text`` is not a string, is longer than
    :data:`MAX_QUERY_TEXT_CHARS` characters or has more than :data:`MAX_QUERY_TERMS` terms.
    """
    if text is None:
        return ()
    _check_str("query", text)
    if len(text) > MAX_QUERY_TEXT_CHARS:
        raise ValueError(f"query is {len(text)} characters, more than {MAX_QUERY_TEXT_CHARS}")
    terms = dict.fromkeys(_terms_in_order(text))
    if len(terms) > MAX_QUERY_TERMS:
        raise ValueError(f"query has {len(terms)} distinct terms, more than {MAX_QUERY_TERMS}")
    return tuple(terms)


def check_storable(timestamp: datetime, us: int) -> None:
    """``ValueError`` unless a record's time (``us``: its microseconds since the epoch)
    is in the storable range."""
    if not MIN_TIMESTAMP_US <= us < MAX_TIMESTAMP_US:
        raise ValueError(f"timestamp {timestamp.isoformat()} is outside 1970-01-01..2262-01-01 UTC")


@dataclass(frozen=True, slots=True)
class AuditViolation:
    """One finding kept with an audit record (type, severity 1-5, confidence, message)."""

    type: str
    severity: int
    confidence: float
    message: str = ""

    def __post_init__(self) -> None:
        kind = _check_str("violation type", self.type)
        if not 1 <= len(kind) <= 64 or _CONTROL_RE.search(kind):
            raise ValueError("violation type must be 1-64 characters without control characters")
        sev = self.severity
        if isinstance(sev, bool) or not isinstance(sev, int) or not 1 <= sev <= 5:
            raise ValueError(f"violation severity must be an integer 1-5, got {sev!r}")
        object.__setattr__(self, "severity", int(sev))
        object.__setattr__(
            self, "confidence", _check_probability("violation confidence", self.confidence)
        )
        message = _check_str("violation message", self.message)
        if utf8_length(message) > MAX_VIOLATION_MESSAGE_BYTES:
            raise ValueError(
                f"violation message is longer than {MAX_VIOLATION_MESSAGE_BYTES} UTF-8 bytes"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "severity": self.severity,
            "confidence": self.confidence,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditViolation:
        return cls(
            type=data["type"],
            severity=data["severity"],
            confidence=data["confidence"],
            message=data.get("message", ""),
        )


def _new_action_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited action.

    Construction validates every field (see the module docstring for the limits) and
    normalises: ``decision`` to a :class:`Decision`, ``timestamp`` to an aware UTC
    datetime, ``violations`` to a tuple of :class:`AuditViolation`.  ``action_id``
    defaults to a fresh random id and ``timestamp`` to now; keep the record (or its id)
    to retry an index without creating a duplicate.  An empty ``region_id`` is filled in
    with the store's region when indexed.
    """

    agent_id: str
    decision: Decision
    risk_score: float
    action_text: str
    stated_intent: str = ""
    action_type: str = ""
    violations: tuple[AuditViolation, ...] = ()
    region_id: str = ""
    timestamp: datetime = field(default_factory=_now)
    action_id: str = field(default_factory=_new_action_id)
    #: The timestamp as microseconds since the Unix epoch (derived).
    timestamp_us: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        # Fast paths keep construction cheap (~10 µs): bulk loads build millions of these.
        action_id = _check_str("action_id", self.action_id)
        if not _ID_RE.fullmatch(action_id):
            raise ValueError(
                f"action_id {action_id[:64]!r} is not valid: 1-128 characters from letters, "
                "digits and '_.:@/+=-'"
            )
        _check_agent_id("agent_id", self.agent_id)
        if type(self.decision) is not Decision:
            object.__setattr__(self, "decision", parse_decision(self.decision))
        risk = self.risk_score
        if type(risk) is not float or not 0.0 <= risk <= 1.0:
            object.__setattr__(self, "risk_score", _check_probability("risk_score", risk))
        for name in ("action_text", "stated_intent"):
            text = _check_str(name, getattr(self, name))
            if len(text) * 4 > MAX_TEXT_BYTES and (size := utf8_length(text)) > MAX_TEXT_BYTES:
                raise ValueError(
                    f"{name} is {size} bytes, more than the {MAX_TEXT_BYTES}-byte limit"
                )
        action_type = _check_str("action_type", self.action_type)
        if len(action_type) > 128 or _CONTROL_RE.search(action_type):
            raise ValueError("action_type must be at most 128 characters, no control characters")
        violations = self.violations
        if type(violations) is not tuple:
            violations = tuple(violations)
            object.__setattr__(self, "violations", violations)
        if len(violations) > MAX_VIOLATIONS:
            raise ValueError(f"{len(violations)} violations, more than {MAX_VIOLATIONS}")
        for v in violations:
            if not isinstance(v, AuditViolation):
                raise ValueError("violations must be AuditViolation objects")
        if self.region_id:
            check_region_id("region_id", self.region_id, allow_empty=True)
        ts = self.timestamp
        us = to_utc_us(ts, "timestamp")
        check_storable(ts, us)
        if ts.tzinfo is not UTC:
            object.__setattr__(self, "timestamp", datetime_from_us(us))
        object.__setattr__(self, "timestamp_us", us)

    @classmethod
    def from_evaluation(
        cls,
        action: Action,
        evaluation: Evaluation,
        *,
        region_id: str = "",
        action_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> AuditRecord:
        """The record of ``action`` as evaluated (decision, risk, findings)."""
        violations = tuple(
            AuditViolation(
                type=str(v.type),
                severity=int(v.severity),
                confidence=v.confidence,
                message=v.message,
            )
            for v in evaluation.violations[:MAX_VIOLATIONS]
        )
        return cls(
            agent_id=action.agent_id,
            decision=evaluation.decision,
            risk_score=evaluation.risk_score,
            action_text=action.action_text,
            stated_intent=action.stated_intent,
            action_type=action.action_type,
            violations=violations,
            region_id=region_id,
            timestamp=timestamp if timestamp is not None else _now(),
            action_id=action_id if action_id is not None else _new_action_id(),
        )

    @classmethod
    def from_checked(
        cls,
        *,
        action_id: str,
        agent_id: str,
        decision: Decision,
        risk_score: float,
        action_text: str,
        stated_intent: str,
        action_type: str,
        violations: tuple[AuditViolation, ...],
        region_id: str,
        timestamp: datetime,
        timestamp_us: int,
    ) -> AuditRecord:
        """A record of values that pass every check of the constructor already, in the
        form it normalises them to (``timestamp`` an aware UTC datetime, ``timestamp_us``
        its microseconds since the epoch), built without running the checks again.

        For records made of data checked where it came in: a region node's record of an
        evaluation (the action checked at the RPC boundary by rules at least as strict,
        the rest made by the node) costs about a fifth of a checked construction. Its
        tests build each record both ways and compare them."""
        record = object.__new__(cls)
        put = object.__setattr__
        put(record, "agent_id", agent_id)
        put(record, "decision", decision)
        put(record, "risk_score", risk_score)
        put(record, "action_text", action_text)
        put(record, "stated_intent", stated_intent)
        put(record, "action_type", action_type)
        put(record, "violations", violations)
        put(record, "region_id", region_id)
        put(record, "timestamp", timestamp)
        put(record, "action_id", action_id)
        put(record, "timestamp_us", timestamp_us)
        return record


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records a search or a statistics call covers.

    ``text``: full-text terms (module docstring); ``agent_id``, ``decision`` and
    ``region_id``: exact matches; ``start_time`` inclusive, ``end_time`` exclusive (aware,
    or naive = UTC; a range wider than the storable one is clamped to it);
    ``min_risk_score``: ``risk_score >= min_risk_score``.  ``None`` leaves a condition
    out.  ``ValueError`` when ``start_time >= end_time``, ``min_risk_score`` is outside
    ``[0, 1]``, ``decision`` is unknown, or an id is malformed.
    """

    text: str | None = None
    agent_id: str | None = None
    decision: Decision | None = None
    region_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    min_risk_score: float | None = None
    terms: tuple[str, ...] = field(init=False, default=())
    start_us: int | None = field(init=False, default=None)
    end_us: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", query_terms(self.text))
        if self.agent_id is not None:
            _check_agent_id("agent_id", self.agent_id)
        if self.decision is not None:
            object.__setattr__(self, "decision", parse_decision(self.decision))
        if self.region_id is not None:
            check_region_id("region_id", self.region_id, allow_empty=False)
        start = None if self.start_time is None else to_utc_us(self.start_time, "start_time")
        end = None if self.end_time is None else to_utc_us(self.end_time, "end_time")
        if start is not None and end is not None and start >= end:
            raise ValueError(
                f"time range is empty or inverted: start_time {self.start_time} is not "
                f"before end_time {self.end_time}"
            )
        if start is not None:
            start = min(max(start, MIN_TIMESTAMP_US), MAX_TIMESTAMP_US)
        if end is not None:
            end = min(max(end, MIN_TIMESTAMP_US), MAX_TIMESTAMP_US)
        object.__setattr__(self, "start_us", start)
        object.__setattr__(self, "end_us", end)
        if self.min_risk_score is not None:
            object.__setattr__(
                self, "min_risk_score", _check_probability("min_risk_score", self.min_risk_score)
            )

    def fingerprint_fields(self) -> dict[str, Any]:
        """The normalised conditions, JSON-ready (what a page token is bound to)."""
        return {
            "terms": list(self.terms),
            "agent_id": self.agent_id,
            "decision": None if self.decision is None else self.decision.value,
            "region_id": self.region_id,
            "start_us": self.start_us,
            "end_us": self.end_us,
            "min_risk_score": self.min_risk_score,
        }


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A filter plus paging: ``page_size`` in ``1..MAX_PAGE_SIZE`` (default 100),
    ``page_token`` from the previous page's ``next_page_token`` (``None`` for the first
    page; it must come from the same filter and order), ``order`` (default: relevance
    when there are terms, else newest)."""

    filter: AuditFilter = field(default_factory=AuditFilter)
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str | None = None
    order: SearchOrder | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.filter, AuditFilter):
            raise ValueError("filter must be an AuditFilter")
        size = self.page_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"page_size must be an integer, got {size!r}")
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {size}")
        if self.page_token is not None:
            _check_str("page_token", self.page_token)
            if not self.page_token:
                object.__setattr__(self, "page_token", None)
        order = self.order
        if order is not None:
            try:
                order = SearchOrder(order)
            except ValueError:
                accepted = ", ".join(o.value for o in SearchOrder)
                raise ValueError(f"order must be one of {accepted}; got {order!r}") from None
        if order is None or not self.filter.terms:
            order = SearchOrder.RELEVANCE if self.filter.terms else SearchOrder.NEWEST
        object.__setattr__(self, "order", order)

    @property
    def effective_order(self) -> SearchOrder:
        """The order in force (never ``None`` after construction)."""
        return self.order if self.order is not None else SearchOrder.NEWEST


@dataclass(frozen=True, slots=True)
class AuditHit:
    """One search result; ``score`` is the relevance (higher first), ``None`` in
    newest-first order."""

    record: AuditRecord
    score: float | None = None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of hits.  ``total`` is the number of matching records when the first
    page was read (later pages repeat it); ``next_page_token`` is ``None`` on the last
    page."""

    hits: tuple[AuditHit, ...]
    total: int
    next_page_token: str | None

    @property
    def records(self) -> tuple[AuditRecord, ...]:
        return tuple(h.record for h in self.hits)


def record_from_fields(
    *,
    action_id: str | None,
    agent_id: str | None,
    decision: Decision | str | None,
    action_data: Mapping[str, str],
    violations: Iterable[Mapping[str, Any] | AuditViolation],
    region_id: str,
    risk_score: float | None,
    timestamp: datetime | None,
) -> AuditRecord:
    """An :class:`AuditRecord` from the guide's ``index_audit_log`` fields (``action_data``
    holds ``actual_action``, ``stated_intent`` and ``action_type``; each violation is an
    :class:`AuditViolation` or a dict of its fields). ``ValueError`` for a missing or bad
    field."""
    if agent_id is None or decision is None or risk_score is None:
        raise ValueError("agent_id, decision and risk_score are required")
    unknown = set(action_data) - {"actual_action", "stated_intent", "action_type"}
    if unknown:
        raise ValueError(
            f"action_data has unknown keys {sorted(unknown)}; it takes actual_action, "
            "stated_intent and action_type"
        )
    found: list[AuditViolation] = []
    for i, v in enumerate(violations):
        if isinstance(v, AuditViolation):
            found.append(v)
            continue
        if not isinstance(v, Mapping):
            raise ValueError(
                f"violations[{i}] must be an AuditViolation or a dict of its fields, got "
                f"{type(v).__name__}"
            )
        try:
            found.append(AuditViolation(**v))
        except TypeError:  # a missing, unknown or non-string key
            raise ValueError(
                f"violations[{i}] needs type, severity, confidence and message, got "
                f"{sorted(map(str, v))}"
            ) from None
    return AuditRecord(
        agent_id=agent_id,
        decision=decision,  # type: ignore[arg-type]  # validated and converted
        risk_score=risk_score,
        action_text=action_data.get("actual_action", ""),
        stated_intent=action_data.get("stated_intent", ""),
        action_type=action_data.get("action_type", ""),
        violations=tuple(found),
        region_id=region_id,
        timestamp=timestamp if timestamp is not None else _now(),
        action_id=action_id if action_id is not None else _new_action_id(),
    )


@dataclass(frozen=True, slots=True)
class AuditStatistics:
    """Aggregates over the records a filter covers.

    ``avg_risk_score`` is ``None`` when ``total_actions`` is 0; ``decision_counts`` has
    every :class:`Decision` value as a key (zeros included).
    """

    total_actions: int
    unique_agents: int
    avg_risk_score: float | None
    decision_counts: Mapping[str, int]

    def __getitem__(self, name: str) -> Any:
        """``stats["total_actions"]``, as the guide reads it (the same as the attribute)."""
        if name not in AuditStatistics.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)


@dataclass(frozen=True, slots=True)
class IndexResult:
    """Outcome of a bulk index: records newly stored, and records skipped because their
    ``action_id`` was already stored (or repeated earlier in the same batch)."""

    indexed: int
    duplicates: int


def dedupe_records(records: Sequence[AuditRecord]) -> tuple[list[AuditRecord], int]:
    """``records`` with later repeats of an ``action_id`` dropped, and how many were."""
    seen: set[str] = set()
    out: list[AuditRecord] = []
    for r in records:
        if r.action_id in seen:
            continue
        seen.add(r.action_id)
        out.append(r)
    return out, len(records) - len(out)
