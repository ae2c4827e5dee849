"""Deterministic rule-based detectors for AI agents' actions.

An :class:`Action` (agent id, action text, action type, stated intent, context map) is
scanned by a fixed set of rules, grouped into six detectors, one per
:class:`ViolationType`.  :func:`detect` runs them all and returns the findings as
:class:`Violation` objects, sorted by severity (descending), then type, then rule name.

Design
------
* Every regular expression is compiled once, at import.  Patterns either start with a
  literal keyword or are anchored by a look-behind, and every repetition that can span
  text is bounded, so scanning the largest accepted action (64 KiB) stays linear-ish.
* Each rule contributes at most one finding per action (the first field and the first
  match win), so ``len(detect(action)) <= MAX_FINDINGS``.
* Messages never echo matched text: a finding names the rule, what it saw and the field
  (``action_text``, ``stated_intent`` or ``context``), never the secret, card number or
  personal data itself.
* Severity uses the 1..5 scale of :class:`Severity` (``severity / 5`` feeds the noisy-OR
  risk kernel); confidence is the rule's estimated precision, a probability in ``[0, 1]``.

Text views
----------
Rules look at one of three views of each field:

* ``raw``: the text as given (credentials, shell commands, exfiltration, personal data);
* ``sql``: SQL comments (``/* ... */`` and ``-- ...``) replaced by a space and runs of
  whitespace collapsed to one space, so ``DROP/**/TABLE`` or ``DELETE\\n  FROM`` match
  (destructive statements, PII column selection).  A comment marker inside a string
  literal or quoted identifier (``'...'``, ``"..."``, or in backquotes) starts no comment in
  SQL, but does in a shell-quoted command (``psql -c 'DROP/**/TABLE t'``): when the two
  readings differ, the view is both, joined by `` ; `` (so ``SELECT '--'; DROP TABLE t``
  is seen too);
* ``prose``: what a reader (a language model) reads: combining marks and invisible
  characters (zero-width, bidirectional controls, variation selectors) removed, then
  Unicode NFKC-normalised (full-width letters folded), Cyrillic and Greek look-alikes of
  Latin letters read as those, characters of the invisible Unicode tag block read as the
  ASCII they tag, and whitespace collapsed (prompt injection).

All keyword patterns are case-insensitive, except token formats whose case is part of the
format (AWS key ids, private-key armour, GitHub/Google tokens).

Rule table
----------
``RULES`` holds every rule; ``rule_table()`` lists ``(name, type, severity, confidence,
description)``.  Summary (S = severity, C = confidence):

=====================================  ====================  ==  ====  =====================
rule                                   type                  S   C     fields
=====================================  ====================  ==  ====  =====================
personal_data.ssn                      PERSONAL_DATA         3   0.90  text
personal_data.credit_card              PERSONAL_DATA         3   0.85  text
personal_data.sql_sensitive_cols       PERSONAL_DATA         3   0.80  text
personal_data.harvest_contacts         PERSONAL_DATA         3   0.80  text
personal_data.bulk_contact_export      PERSONAL_DATA         2   0.70  text
personal_data.bulk_contacts            PERSONAL_DATA         2   0.60  text
personal_data.select_all_people        PERSONAL_DATA         2   0.60  text
destructive_database.drop_database     DESTRUCTIVE_DATABASE  5   0.95  text
destructive_database.drop_object       DESTRUCTIVE_DATABASE  4   0.95  text
destructive_database.truncate          DESTRUCTIVE_DATABASE  4   0.90  text
destructive_database.delete_no_where   DESTRUCTIVE_DATABASE  4   0.90  text
destructive_database.tautology_where   DESTRUCTIVE_DATABASE  4   0.85  text
destructive_database.update_no_where   DESTRUCTIVE_DATABASE  4   0.85  text
destructive_database.nosql_wipe        DESTRUCTIVE_DATABASE  4   0.85  text
destructive_database.alter_drop        DESTRUCTIVE_DATABASE  3   0.85  text
credentials.private_key                CREDENTIALS           4   0.95  text, intent, context
credentials.aws_access_key             CREDENTIALS           4   0.90  text, intent, context
credentials.vendor_token               CREDENTIALS           3   0.90  text, intent, context
credentials.bearer_token               CREDENTIALS           3   0.85  text, intent, context
credentials.api_key_assignment         CREDENTIALS           3   0.80  text, intent, context
credentials.url_credentials            CREDENTIALS           3   0.80  text, intent, context
credentials.password_assignment        CREDENTIALS           3   0.75  text, intent, context
command_injection.reverse_shell        COMMAND_INJECTION     5   0.95  text
command_injection.rm_rf_root           COMMAND_INJECTION     5   0.90  text
command_injection.fork_bomb            COMMAND_INJECTION     4   0.95  text
command_injection.curl_pipe_shell      COMMAND_INJECTION     4   0.90  text
command_injection.sensitive_file       COMMAND_INJECTION     3   0.85  text
command_injection.chained_danger       COMMAND_INJECTION     3   0.80  text
command_injection.substitution         COMMAND_INJECTION     3   0.80  text
command_injection.pipe_to_shell        COMMAND_INJECTION     3   0.75  text
prompt_injection.ignore_instr          PROMPT_INJECTION      3   0.90  text, intent, context
prompt_injection.jailbreak             PROMPT_INJECTION      3   0.85  text, intent, context
prompt_injection.system_prompt         PROMPT_INJECTION      3   0.85  text, intent, context
prompt_injection.fake_system_tag       PROMPT_INJECTION      3   0.80  text, intent, context
prompt_injection.role_override         PROMPT_INJECTION      3   0.75  text, intent, context
prompt_injection.roleplay              PROMPT_INJECTION      2   0.70  text, intent, context
data_exfiltration.encoded_dump         DATA_EXFILTRATION     4   0.90  text
data_exfiltration.upload_external      DATA_EXFILTRATION     3   0.80  text
data_exfiltration.drop_site            DATA_EXFILTRATION     3   0.80  text
data_exfiltration.sql_outfile          DATA_EXFILTRATION     3   0.80  text
data_exfiltration.remote_copy          DATA_EXFILTRATION     3   0.75  text
data_exfiltration.bulk_external        DATA_EXFILTRATION     3   0.70  text
intent.mismatch                        (see below)           3   0.80  intent vs text
=====================================  ====================  ==  ====  =====================

Stated intent vs action
-----------------------
An action *claims to be read-only* when its ``action_type`` is one of
:data:`READ_ONLY_ACTION_TYPES`, or its ``stated_intent`` contains a read verb (read, view,
summarise, list, inspect, report, analyse, ...) and no write verb (delete, drop, update,
upload, send, export, deploy, ...).  When such an action has findings of a side-effect
type (:data:`SIDE_EFFECT_TYPES`: destructive database, command injection, exfiltration):

1. each of those findings' confidence is raised to ``c + (1 - c) * INTENT_MISMATCH_BOOST``
   (``0.5``: half of the remaining doubt), and
2. one extra ``intent.mismatch`` finding is added, with the type of the most severe
   side-effect finding, severity HIGH and confidence ``0.80``.

Host classification (exfiltration)
----------------------------------
A destination host is *internal* when it is an IP address that is private, loopback or
link-local, a single-label name (``db``, ``localhost``), a name under an internal suffix
(``.internal``, ``.local``, ``.localdomain``, ``.lan``, ``.corp``, ``.intranet``,
``.svc``, ``.home.arpa``), or listed (exactly or as a parent domain) in the action's
``context["allowed_hosts"]`` (comma- or whitespace-separated).  Any other host is external.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

__all__ = [
    "DETECTORS",
    "FINDINGS",
    "INTENT_MISMATCH_BOOST",
    "MAX_FINDINGS",
    "READ_ONLY_ACTION_TYPES",
    "RULES",
    "SIDE_EFFECT_TYPES",
    "Action",
    "Detector",
    "Rule",
    "Severity",
    "Violation",
    "ViolationType",
    "decode_findings",
    "detect",
    "detect_encoded",
    "is_internal_host",
    "luhn_valid",
    "read_only_claim",
    "rule_table",
]


# --------------------------------------------------------------------------------------------
# Domain types
# --------------------------------------------------------------------------------------------


class Severity(IntEnum):
    """Severity of a finding, on the 1..5 scale used by the risk kernel."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4
    EMERGENCY = 5


class ViolationType(StrEnum):
    """Category of a finding."""

    PERSONAL_DATA = "PERSONAL_DATA"
    DESTRUCTIVE_DATABASE = "DESTRUCTIVE_DATABASE"
    CREDENTIALS = "CREDENTIALS"
    COMMAND_INJECTION = "COMMAND_INJECTION"
    PROMPT_INJECTION = "PROMPT_INJECTION"
    DATA_EXFILTRATION = "DATA_EXFILTRATION"


@dataclass(frozen=True, slots=True)
class Violation:
    """One finding: its type, severity, confidence in ``[0, 1]``, a redacted message and
    the name of the rule (``detector``) that produced it."""

    type: ViolationType
    severity: Severity
    confidence: float
    message: str
    detector: str

    def __post_init__(self) -> None:
        c = float(self.confidence)
        if not 0.0 <= c <= 1.0:  # also rejects NaN
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence!r}")
        object.__setattr__(self, "confidence", c)
        object.__setattr__(self, "type", ViolationType(self.type))
        object.__setattr__(self, "severity", Severity(self.severity))


_NO_CONTEXT: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Action:
    """An agent's proposed action.  ``context`` is copied into a read-only mapping."""

    agent_id: str
    action_text: str
    action_type: str
    stated_intent: str = ""
    context: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        context = self.context
        # no context (most actions): one shared read-only empty mapping
        object.__setattr__(
            self,
            "context",
            _NO_CONTEXT
            if type(context) is dict and not context
            else MappingProxyType(dict(context)),
        )


# --------------------------------------------------------------------------------------------
# Text views
# --------------------------------------------------------------------------------------------

View = Literal["raw", "sql", "prose"]
FieldName = Literal["action_text", "stated_intent", "context"]

_TEXT_ONLY: Final[tuple[FieldName, ...]] = ("action_text",)
_ALL_FIELDS: Final[tuple[FieldName, ...]] = ("action_text", "stated_intent", "context")

_WS_RE: Final = re.compile(r"\s+")
_NON_DIGIT_RE: Final = re.compile(r"\D")
_HOST_SPLIT_RE: Final = re.compile(r"[,\s]+")
_SQL_LINE_COMMENT_RE: Final = re.compile(r"--[^\n]*")
#: What a reader does not see in prose: zero-width and other invisible format characters
#: (bidirectional controls, variation selectors, the combining grapheme joiner, Hangul
#: fillers, tag-block delimiters), and combining marks (put on a letter, they would make
#: NFKC compose it into another letter).
_INVISIBLE_RE: Final = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0001\U000e007f\U000e0100-\U000e01ef"
    "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
)
#: Letters that look like Latin ones (Cyrillic, Greek) as the Latin letter, and the
#: characters of the Unicode tag block (invisible, read as ASCII by language models) as
#: the ASCII character they tag.
_LOOKALIKE_TABLE: Final[dict[int, str]] = {
    **{
        ord(a): b
        for a, b in zip(
            "аеорсухіјѕһԁԛԝӏкАВЕКМНОРСТХУІЈЅԀԚԜӀαονριεκυχγΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
            "aeopcyxijshdqwlkABEKMHOPCTXYIJSDQWIaovpiekuxyABEZHIKMNOPTYX",
            strict=True,
        )
    },
    **{0xE0000 + c: chr(c) for c in range(0x20, 0x7F)},
}
_LOOKALIKE_RE: Final = re.compile(
    "["
    + "".join(sorted(re.escape(chr(c)) for c in _LOOKALIKE_TABLE if c < 0x10000))
    + "\U000e0020-\U000e007e]"
)


def _strip_block_comments(text: str) -> str:
    """Replace ``/* ... */`` blocks by a space in one linear pass (an unterminated block
    runs to the end of the text)."""
    if "/*" not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("/*", pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        out.append(" ")
        end = text.find("*/", start + 2)
        if end < 0:
            break
        pos = end + 2
    return "".join(out)


def _collapse_ws(text: str) -> str:
    """Runs of whitespace replaced by one space, ends stripped.  Fast path: a printable
    text (every whitespace character but the space is unprintable) without two spaces in
    a row has no run to replace."""
    if "  " not in text and text.isprintable():
        return text.strip()
    return _WS_RE.sub(" ", text).strip()


#: In SQL text: a string literal or quoted identifier (group 1), or a comment.
_SQL_QUOTED_OR_COMMENT_RE: Final = re.compile(
    r"('[^']*'|\"[^\"]*\"|`[^`]*`)|/\*.*?(?:\*/|\Z)|--[^\n]*", re.DOTALL
)


def _keep_quoted(m: re.Match[str]) -> str:
    return m.group(1) or " "


def _sql_view(text: str) -> str:
    if "/*" not in text and "--" not in text:
        return _collapse_ws(text)
    # every comment marker starts a comment (as in a shell-quoted command)...
    naive = _strip_block_comments(text)
    if "--" in naive:
        naive = _SQL_LINE_COMMENT_RE.sub(" ", naive)
    naive = _collapse_ws(naive)
    if "'" not in text and '"' not in text and "`" not in text:
        return naive
    # ... and none inside quotes (as SQL reads it): both readings when they differ
    exact = _collapse_ws(_SQL_QUOTED_OR_COMMENT_RE.sub(_keep_quoted, text))
    return naive if exact == naive else f"{naive} ; {exact}"


def _prose_view(text: str) -> str:
    if not text.isascii():  # ASCII is NFKC-stable and has none of the characters changed
        text = unicodedata.normalize("NFKC", _INVISIBLE_RE.sub("", text))
        if _LOOKALIKE_RE.search(text) is not None:  # a scan is cheaper than a translation
            text = text.translate(_LOOKALIKE_TABLE)
    return _collapse_ws(text)


class _ActionView:
    """The fields of one action, their (lazily computed, cached) views, and the prefilter's
    verdict per field (:class:`_Prefilter`).

    :meth:`may_fire_anywhere` and :meth:`may_fire` answer the prefilter's question rule by
    rule.  :func:`detect` asks the same question in bulk (:meth:`_Prefilter.findings`),
    unless either method has been replaced (the tests replace both by ``lambda ...: True``
    to run every rule unfiltered): then it asks them rule by rule, as :func:`_run` does.
    """

    __slots__ = ("action", "allowed_hosts", "folded", "masks", "views")

    def __init__(self, action: Action) -> None:
        self.action = action
        context = action.context
        #: the views computed so far, by (field, view); the raw ones from the start
        self.views: dict[tuple[FieldName, View], str] = {
            ("action_text", "raw"): action.action_text,
            ("stated_intent", "raw"): action.stated_intent,
            ("context", "raw"): "\n".join(context[k] for k in sorted(context)) if context else "",
        }
        #: per field, the prefilter's mask (see :meth:`field_mask`)
        self.masks: dict[FieldName, int] = {}
        #: per field, the folded raw text and whether the raw text is ASCII (set by the
        #: prefilter with the field's mask)
        self.folded: dict[FieldName, tuple[str, bool]] = {}
        raw = context.get("allowed_hosts", "")
        self.allowed_hosts: tuple[str, ...] = (
            ()
            if raw == ""
            else tuple(
                h.strip().lower().rstrip(".") for h in _HOST_SPLIT_RE.split(raw) if h.strip()
            )
        )

    def field_mask(self, name: FieldName) -> int:
        """The prefilter's bit mask of the patterns that may match field ``name``."""
        mask = self.masks.get(name)
        if mask is None:
            mask = self.masks[name] = _PREFILTER.field_mask(self, name)
        return mask

    def may_fire_anywhere(self, rule: Rule) -> bool:
        """False only when ``rule`` can fire in none of the fields (see :class:`_Prefilter`)."""
        return any(self.may_fire(rule, name) for name in rule.fields)

    def may_fire(self, rule: Rule, name: FieldName) -> bool:
        """False only when no pattern of ``rule`` can match ``name`` (see :class:`_Prefilter`)."""
        return _PREFILTER.kept(self, rule, name)

    def text(self, name: FieldName, view: View) -> str:
        key = (name, view)
        cached = self.views.get(key)
        if cached is None:  # raw texts are there from the start
            raw = self.views[name, "raw"]
            cached = self.views[key] = _sql_view(raw) if view == "sql" else _prose_view(raw)
        return cached


_MAY_FIRE: Final = _ActionView.may_fire
_MAY_FIRE_ANYWHERE: Final = _ActionView.may_fire_anywhere


# --------------------------------------------------------------------------------------------
# Helpers: Luhn, hosts
# --------------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of decimal digits (``False`` if any non-digit
    or if empty)."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


#: Issuer prefixes accepted for card numbers (Visa, Mastercard, Amex, Discover, JCB,
#: Diners, UnionPay), with the allowed lengths; a Luhn-valid number outside them is ignored.
_CARD_PREFIX_RE: Final = re.compile(
    r"4\d{12}(?:\d{3}){0,2}"  # Visa 13/16/19
    r"|5[1-5]\d{14}|2(?:2[2-9]|[3-6]\d|7[01])\d{13}|2720\d{12}"  # Mastercard 16
    r"|3[47]\d{13}"  # Amex 15
    r"|6(?:011|5\d\d)\d{12,15}"  # Discover 16-19
    r"|35(?:2[89]|[3-8]\d)\d{12,15}"  # JCB 16-19
    r"|3(?:0[0-5]|[68]\d)\d{11,16}"  # Diners 14-19
    r"|62\d{14,17}"  # UnionPay 16-19
)


def _is_card_number(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return (
        13 <= len(digits) <= 19
        and _CARD_PREFIX_RE.fullmatch(digits) is not None
        and luhn_valid(digits)
    )


_INTERNAL_SUFFIXES: Final = (
    ".internal",
    ".local",
    ".localdomain",
    ".lan",
    ".corp",
    ".intranet",
    ".svc",
    ".home.arpa",
)


def is_internal_host(host: str, allowed: Iterable[str] = ()) -> bool:
    """Whether ``host`` is internal (see the module docstring's host classification)."""
    h = host.strip().strip("[]").lower().rstrip(".")
    if not h:
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        pass
    else:
        return ip.is_private or ip.is_loopback or ip.is_link_local
    if "." not in h or h.endswith(_INTERNAL_SUFFIXES):
        return True
    return any(h == a or h.endswith("." + a) for a in allowed)


_URL_HOST_RE: Final = re.compile(
    r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,15}://(?:[^\s/@?#]{0,256}@)?"
    r"(\[[0-9a-f:.]{2,45}\]|[a-z0-9_.-]{1,253})",
    re.IGNORECASE,
)
_EMAIL_RE: Final = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
    r"([A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24})(?![A-Za-z0-9-])"
)
_PHONE_RE: Final = re.compile(
    r"(?<![\d+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\d)"
)


def _external_hosts(text: str, allowed: tuple[str, ...], *, emails: bool) -> bool:
    """Whether ``text`` names an external destination (a URL host, or with ``emails`` an
    e-mail domain)."""
    # a URL needs "://" and an e-mail address "@": skip the scans without them
    if "://" in text:
        for m in _URL_HOST_RE.finditer(text):
            if not is_internal_host(m.group(1), allowed):
                return True
    if emails and "@" in text:
        for m in _EMAIL_RE.finditer(text):
            if not is_internal_host(m.group(1), allowed):
                return True
    return False


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

_I: Final = re.IGNORECASE

#: ``(match, view) -> bool``: extra check of a regex match (e.g. Luhn, placeholder values).
MatchCheck = Callable[["re.Match[str]", _ActionView], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection rule: any of ``patterns`` matching (and passing ``check``) in any of
    ``fields`` (in the given ``view``) is a finding with this type, severity and
    confidence.  ``min_distinct`` > 1 instead counts distinct matches over the field
    (bulk rules)."""

    name: str
    type: ViolationType
    severity: Severity
    confidence: float
    description: str
    patterns: tuple[re.Pattern[str], ...]
    view: View = "raw"
    fields: tuple[FieldName, ...] = _TEXT_ONLY
    check: MatchCheck | None = None
    min_distinct: int = 1

    def matches(self, av: _ActionView, name: FieldName) -> bool:
        text = av.text(name, self.view)
        return bool(text) and self._fires(self.patterns, text, av)

    def _fires(self, patterns: Sequence[re.Pattern[str]], text: str, av: _ActionView) -> bool:
        """Whether ``patterns`` (this rule's, or those of them the prefilter kept) make the
        rule fire on ``text``, a non-empty view of one field of ``av``."""
        check = self.check
        if self.min_distinct > 1:
            seen: set[str] = set()
            for pattern in patterns:
                for m in pattern.finditer(text):
                    if check is None or check(m, av):
                        token = m.group(0)
                        seen.add(token.lower() if "@" in token else _NON_DIGIT_RE.sub("", token))
                        if len(seen) >= self.min_distinct:
                            return True
            return False
        if check is None:
            # the first match of finditer is the match of search
            return any(pattern.search(text) is not None for pattern in patterns)
        for pattern in patterns:
            for m in pattern.finditer(text):
                if check(m, av):
                    return True
        return False

    def first_field(self, av: _ActionView) -> FieldName | None:
        """The first field (in ``fields`` order) where this rule fires, or ``None``."""
        for name in self.fields:
            if av.may_fire(self, name) and self.matches(av, name):
                return name
        return None


@dataclass(frozen=True, slots=True)
class Detector:
    """A named group of rules, all of one violation type."""

    name: str
    type: ViolationType
    rules: tuple[Rule, ...]

    def detect(self, action: Action) -> list[Violation]:
        """The findings of this detector alone (unsorted, no intent adjustment)."""
        return _findings(_ActionView(action), self)


def _finding(rule: Rule, where: FieldName) -> Violation:
    return Violation(
        type=rule.type,
        severity=rule.severity,
        confidence=rule.confidence,
        message=f"{rule.description} (in {where}; matched value redacted)",
        detector=rule.name,
    )


def _run(detector: Detector, av: _ActionView) -> Iterator[Violation]:
    """The findings of ``detector``, asking the prefilter rule by rule."""
    for rule in detector.rules:
        if not av.may_fire_anywhere(rule):
            continue
        where = rule.first_field(av)
        if where is not None:
            yield _finding(rule, where)


def _findings(av: _ActionView, detector: Detector | None = None) -> list[Violation]:
    """The findings of ``detector`` (default: of all detectors, in detector order).

    Asks the prefilter in bulk (:meth:`_Prefilter.findings`), unless a prefilter method of
    :class:`_ActionView` has been replaced or ``detector`` has rules other than those of
    :data:`RULES` in their order: then rule by rule (:func:`_run`).  Both give the same
    list."""
    if (
        _ActionView.may_fire is _MAY_FIRE
        and _ActionView.may_fire_anywhere is _MAY_FIRE_ANYWHERE
        and (detector is None or _PREFILTER.rules_mask(detector.rules) is not None)
    ):
        return _PREFILTER.findings(av, detector)
    detectors = DETECTORS if detector is None else (detector,)
    return [v for d in detectors for v in _run(d, av)]


def _c(pattern: str, flags: int = _I) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _card_check(m: re.Match[str], _av: _ActionView) -> bool:
    return _is_card_number(m.group(0))


_PLACEHOLDER_RE: Final = re.compile(
    r"(?:\*+|x{3,}|\.{3,}|<[^>]*>?|\$\{?\w*\}?|\{\{.*|%\(?\w*\)?s?|redacted|changeme|"
    r"placeholder|none|null|example|your[_-]?\w*|dummy|\?+|str|string|bytes|int|optional|"
    r"secretstr|required|true|false|hidden|masked|env|environ\w*)",
    re.IGNORECASE,
)


def _secret_value_check(m: re.Match[str], _av: _ActionView) -> bool:
    """Accept a ``key=value`` match unless the value is an obvious placeholder."""
    value = m.group("value")
    return _PLACEHOLDER_RE.fullmatch(value) is None


def _external_text_check(m: re.Match[str], av: _ActionView) -> bool:
    """The action text names an external URL host."""
    return _external_hosts(av.action.action_text, av.allowed_hosts, emails=False)


def _external_dest_check(m: re.Match[str], av: _ActionView) -> bool:
    """The action text names an external URL host or e-mail domain."""
    return _external_hosts(av.action.action_text, av.allowed_hosts, emails=True)


def _remote_host_check(m: re.Match[str], av: _ActionView) -> bool:
    return not is_internal_host(m.group("host"), av.allowed_hosts)


def _where_free_check(m: re.Match[str], _av: _ActionView) -> bool:
    """The statement after the match (up to ``;``) has no WHERE clause."""
    rest = m.string[m.end() :]
    stmt_end = rest.find(";")
    stmt = rest if stmt_end < 0 else rest[:stmt_end]
    return _WHERE_RE.search(stmt) is None


_WHERE_RE: Final = re.compile(r"\bwhere\b", _I)
_DML_RE: Final = re.compile(r"\b(?:delete|update)\b", _I)
#: A WHERE clause ending in ``OR <always true>``: it holds for every row, when it is
#: that of a DELETE / UPDATE (:func:`_tautology_or_check`).
_TAUTOLOGY_OR_RE: Final = re.compile(
    r"\bwhere\b[^;]{0,500}?\bor\s+(?:1\s*=\s*1|0\s*=\s*0|true|1|'(\w{0,16})'\s*=\s*'\1')"
    r"\s*(?:;|$|\)|returning\b|limit\b)",
    _I,
)


def _tautology_or_check(m: re.Match[str], _av: _ActionView) -> bool:
    """For a :data:`_TAUTOLOGY_OR_RE` match: the statement its WHERE belongs to (the 2,000
    characters before it, from the last ``;``) is a DELETE / UPDATE.  Other matches pass."""
    if m.re is not _TAUTOLOGY_OR_RE:
        return True
    head = m.string[max(0, m.start() - 2000) : m.start()]
    stmt = head[head.rfind(";") + 1 :]
    low = stmt.lower()  # substring tests first: cheap, and most statements stop there
    if "delete" not in low and "update" not in low:
        return False
    return _DML_RE.search(stmt) is not None


_IDENT: Final = r"(?:[\w$]+|`[^`]{1,128}`|\"[^\"]{1,128}\"|\[[^\]]{1,128}\])"
_QUAL_IDENT: Final = rf"{_IDENT}(?:\.{_IDENT}){{0,2}}"
#: An optional table alias (``users u``, ``users AS u``): any identifier but a keyword
#: that may follow the table of a DELETE / UPDATE.
_ALIAS: Final = (
    r"(?:\s+(?:as\s+)?(?!(?:where|set|using|returning|limit|order|from|inner|left|join)\b)"
    rf"{_IDENT})?"
)
#: A determiner where a table name would be: prose ("update the config set x = 1",
#: "update my profile set name = Bob"), not a table with an alias.
_NOT_PROSE_TABLE: Final = (
    r"(?!(?:the|an?|my|our|your|their|his|her|its|this|that|these|those)\s+\w)"
)
_PII_COLUMNS: Final = (
    r"ssn|social_security\w*|sin_number|national_id\w*|tax_id\w*|tin|password\w*|passwd|"
    r"pass_hash|pwd\w*|dob|date_of_birth|birth_?date|credit_card\w*|card_number|card_no|"
    r"cc_number|cvv2?|cvc|passport\w*|drivers?_licen[cs]e\w*|bank_account\w*|iban|"
    r"routing_number|medical_record\w*|diagnosis"
)
_SEL_ITEM: Final = r"[\w.`\"\[\]$]{1,200}(?:\s+as\s+[\w`\"]{1,64})?"
_PEOPLE_TABLES: Final = (
    r"users?|customers?|clients?|employees?|staff|patients?|members?|accounts?|people|"
    r"persons?|contacts?|profiles?|students?|subscribers?|user_accounts?|app_users?"
)
_SHELL: Final = r"(?:/(?:usr/)?bin/)?(?:ba|z|k|da|c|tc|fi)?sh"
_DANGER_CMD: Final = (
    r"(?:sudo\s+)?(?:rm\s+-[a-z]*r|mkfs(?:\.\w+)?\b|dd\s+if=|shred\b|wipefs\b|"
    r"shutdown\b|reboot\b|halt\b|poweroff\b|init\s+0\b|kill\s+-9\s+-?1\b|killall\b|"
    r"chmod\s+(?:-r\s+)?[0-7]?777\b|chown\s+-r\b|userdel\b|passwd\b|crontab\s+-r\b|"
    r"iptables\s+-f\b|history\s+-c\b|:\(\)\s*\{)"
)
_READ_WORDS: Final = (
    r"read|reads|reading|view|viewing|summari[sz]e|summari[sz]ing|summary|list|listing|"
    r"check|checking|inspect|inspecting|look\s+up|lookup|report|reporting|analy[sz]e|"
    r"analy[sz]ing|analysis|query|querying|fetch|fetching|get|show|count|audit|auditing|"
    r"review|reviewing|monitor|monitoring|search|searching|describe|explain|understand|"
    r"investigate|diagnose|preview|browse|display|retrieve|print|verify|test\s+read"
)
_WRITE_WORDS: Final = (
    r"delete|deleting|drop|dropping|remove|removing|clean\s*up|cleanup|purge|truncate|"
    r"wipe|reset|migrate|migration|update|updating|modify|modifying|write|writing|"
    r"deploy|deploying|upload|uploading|send|sending|export|exporting|transfer|backup|"
    r"back\s+up|sync|copy|copying|move|install|create|insert|alter|fix|patch|restore|"
    r"rotate|revoke|kill|terminate|shutdown|restart|execute|run|archive|share|publish|"
    r"email|post|push|replace|overwrite|destroy|format|disable"
)

_PERSONAL = ViolationType.PERSONAL_DATA
_DB = ViolationType.DESTRUCTIVE_DATABASE
_CRED = ViolationType.CREDENTIALS
_CMD = ViolationType.COMMAND_INJECTION
_PI = ViolationType.PROMPT_INJECTION
_EXFIL = ViolationType.DATA_EXFILTRATION

_PERSONAL_RULES: Final = (
    Rule(
        "personal_data.ssn",
        _PERSONAL,
        Severity.HIGH,
        0.90,
        "US social security number",
        (
            _c(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
            _c(
                r"\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\b\D{0,20}"
                r"\d{3}[ -]?\d{2}[ -]?\d{4}(?!\d)"
            ),
        ),
    ),
    Rule(
        "personal_data.credit_card",
        _PERSONAL,
        Severity.HIGH,
        0.85,
        "payment card number (issuer prefix and Luhn check valid)",
        (_c(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"),),
        check=_card_check,
    ),
    Rule(
        "personal_data.sql_sensitive_cols",
        _PERSONAL,
        Severity.HIGH,
        0.80,
        "SQL query selecting sensitive personal-data columns",
        (
            _c(
                rf"\bselect\s+(?:distinct\s+)?(?:{_SEL_ITEM}\s*,\s*){{0,40}}"
                rf"(?:[\w`\"\[\]$]{{1,64}}\.)?[`\"\[]?(?:{_PII_COLUMNS})[`\"\]]?"
                rf"(?:\s+as\s+[\w`\"]{{1,64}})?\s*(?:,\s*{_SEL_ITEM}\s*){{0,40}}\bfrom\s"
            ),
        ),
        view="sql",
    ),
    Rule(
        "personal_data.harvest_contacts",
        _PERSONAL,
        Severity.HIGH,
        0.80,
        "harvesting of e-mail addresses or phone numbers",
        (
            _c(
                r"\b(?:scrap(?:e|es|ed|ing)|harvest(?:s|ed|ing)?|crawl(?:s|ed|ing)?|"
                r"mine|mining)\b[^\n.]{0,60}?\b(?:e-?mails?|e-?mail\s+addresses|"
                r"phone\s+numbers|mobile\s+numbers|contact\s+(?:details|info\w*))\b"
            ),
        ),
    ),
    Rule(
        "personal_data.bulk_contact_export",
        _PERSONAL,
        Severity.MEDIUM,
        0.70,
        "bulk collection of personal contact data",
        (
            _c(
                r"\b(?:collect|extract|export|dump|gather|compile|download|copy|list)"
                r"(?:s|ed|ing)?\b[^\n.]{0,40}?\b(?:all|every|each|bulk|mass|entire)\b"
                r"[^\n.]{0,40}?\b(?:e-?mails?|e-?mail\s+addresses|phone\s+numbers|"
                r"home\s+addresses|contact\s+(?:details|info\w*)|social\s+security)\b"
            ),
        ),
    ),
    Rule(
        "personal_data.bulk_contacts",
        _PERSONAL,
        Severity.MEDIUM,
        0.60,
        "five or more distinct e-mail addresses / phone numbers in one action",
        (_EMAIL_RE, _PHONE_RE),
        min_distinct=5,
    ),
    Rule(
        "personal_data.select_all_people",
        _PERSONAL,
        Severity.MEDIUM,
        0.60,
        "unfiltered SELECT * from a table of people",
        (
            _c(
                rf"\bselect\s+\*\s+from\s+(?:{_IDENT}\.)?[`\"\[]?(?:{_PEOPLE_TABLES})"
                r"[`\"\]]?(?=\s*(?:;|$|\)|order\b|union\b))"
            ),
        ),
        view="sql",
    ),
)

_DB_RULES: Final = (
    Rule(
        "destructive_database.drop_database",
        _DB,
        Severity.EMERGENCY,
        0.95,
        "DROP DATABASE / SCHEMA statement",
        (_c(r"\bdrop\s+(?:database|schema)\b"),),
        view="sql",
    ),
    Rule(
        "destructive_database.drop_object",
        _DB,
        Severity.CRITICAL,
        0.95,
        "DROP TABLE / VIEW / INDEX / USER statement",
        (
            _c(
                r"\bdrop\s+(?:(?:temporary|materialized|foreign)\s+)?"
                r"(?:table|view|index|user|role|collection|keyspace|tablespace|trigger|"
                r"function|procedure|sequence)\b(?!\s+privileges?\b)"
            ),
        ),
        view="sql",
    ),
    Rule(
        "destructive_database.truncate",
        _DB,
        Severity.CRITICAL,
        0.90,
        "TRUNCATE statement",
        (
            _c(r"\btruncate\s+table\b"),
            _c(
                rf"(?:^|;)\s*truncate\s+(?:only\s+)?{_QUAL_IDENT}(?:\s*\*)?"
                rf"(?:\s*,\s*(?:only\s+)?{_QUAL_IDENT}(?:\s*\*)?){{0,64}}"
                r"\s*(?:;|$|cascade\b|restart\b|continue\b)"
            ),
        ),
        view="sql",
    ),
    Rule(
        "destructive_database.delete_no_where",
        _DB,
        Severity.CRITICAL,
        0.90,
        "DELETE without a WHERE clause",
        (
            _c(
                rf"\bdelete\s+from\s+(?:only\s+)?{_NOT_PROSE_TABLE}{_QUAL_IDENT}(?:\s*\*)?{_ALIAS}"
                r"(?=\s*(?:;|$|\)|returning\b|limit\b|order\b))"
            ),
        ),
        view="sql",
        check=_where_free_check,
    ),
    Rule(
        "destructive_database.tautology_where",
        _DB,
        Severity.CRITICAL,
        0.85,
        "DELETE / UPDATE with an always-true WHERE clause",
        (
            _c(
                r"\b(?:delete|update)\b[^;]{0,2000}?\bwhere\s+(?:1\s*=\s*1|0\s*=\s*0|true|"
                r"1|'(\w{0,16})'\s*=\s*'\1'|\w+\s+is\s+not\s+null\s+or\s+\w+\s+is\s+null)"
                r"\s*(?:;|$|\)|returning\b|limit\b)"
            ),
            _TAUTOLOGY_OR_RE,
        ),
        view="sql",
        check=_tautology_or_check,
    ),
    Rule(
        "destructive_database.update_no_where",
        _DB,
        Severity.CRITICAL,
        0.85,
        "UPDATE without a WHERE clause",
        (
            _c(
                rf"\bupdate\s+(?:only\s+)?{_NOT_PROSE_TABLE}{_QUAL_IDENT}(?:\s*\*)?{_ALIAS}"
                rf"\s+set\s+{_QUAL_IDENT}\s*="
            ),
        ),
        view="sql",
        check=_where_free_check,
    ),
    Rule(
        "destructive_database.nosql_wipe",
        _DB,
        Severity.CRITICAL,
        0.85,
        "document-store collection drop or unfiltered delete",
        (
            _c(r"\bdb\.[\w$]+\.drop\(\s*\)"),
            _c(r"\bdb\.dropDatabase\(\s*\)"),
            _c(r"\.(?:deleteMany|remove)\(\s*\{\s*\}\s*\)"),
            _c(r"\bFLUSH(?:ALL|DB)\b"),
        ),
    ),
    Rule(
        "destructive_database.alter_drop",
        _DB,
        Severity.HIGH,
        0.85,
        "ALTER TABLE ... DROP (column / constraint / partition)",
        (_c(rf"\balter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?{_QUAL_IDENT}\s+drop\b"),),
        view="sql",
    ),
)

_CRED_RULES: Final = (
    Rule(
        "credentials.private_key",
        _CRED,
        Severity.CRITICAL,
        0.95,
        "private key block",
        (_c(r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----", 0),),
        fields=_ALL_FIELDS,
    ),
    Rule(
        "credentials.aws_access_key",
        _CRED,
        Severity.CRITICAL,
        0.90,
        "AWS access key id",
        (
            _c(
                r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])",
                0,
            ),
        ),
        fields=_ALL_FIELDS,
    ),
    Rule(
        "credentials.vendor_token",
        _CRED,
        Severity.HIGH,
        0.90,
        "vendor API token (GitHub, Slack, Stripe, Google, OpenAI-style, JWT)",
        (
            _c(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}", 0),
            _c(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{40,255}", 0),
            _c(r"(?<![A-Za-z0-9_-])xox[abposr]-[A-Za-z0-9-]{10,250}", 0),
            _c(r"(?<![A-Za-z0-9_])[sr]k_(?:live|test)_[A-Za-z0-9]{16,247}", 0),
            _c(r"(?<![A-Za-z0-9_])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", 0),
            _c(r"(?<![A-Za-z0-9_-])sk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,200}", 0),
            _c(
                r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,2000}\.eyJ[A-Za-z0-9_-]{8,4000}\.[A-Za-z0-9_-]{8,1000}",
                0,
            ),
        ),
        fields=_ALL_FIELDS,
    ),
    Rule(
        "credentials.bearer_token",
        _CRED,
        Severity.HIGH,
        0.85,
        "bearer token",
        (_c(r"\bbearer\s+[A-Za-z0-9._~+/-]{20,4096}=*"),),
        fields=_ALL_FIELDS,
    ),
    Rule(
        "credentials.api_key_assignment",
        _CRED,
        Severity.HIGH,
        0.80,
        "API key / secret / token assignment",
        (
            _c(
                r"\b(?:[a-z0-9]{1,32}[_-]){0,4}(?:api[_-]?key|apikey|secret[_-]?key|secret|"
                r"access[_-]?token|auth[_-]?token|client[_-]?secret|private[_-]?key|"
                r"secret[_-]?access[_-]?key)[\"']?\s*[:=]\s*[\"']?"
                r"(?P<value>[A-Za-z0-9_\-.+/=]{16,4096})"
            ),
        ),
        fields=_ALL_FIELDS,
        check=_secret_value_check,
    ),
    Rule(
        "credentials.url_credentials",
        _CRED,
        Severity.HIGH,
        0.80,
        "password embedded in a URL",
        (
            _c(
                r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,15}://[^\s:/@]{1,128}:"
                r"(?P<value>[^\s:/@]{1,256})@[a-z0-9_.\[\]-]{1,253}"
            ),
        ),
        fields=_ALL_FIELDS,
        check=_secret_value_check,
    ),
    Rule(
        "credentials.password_assignment",
        _CRED,
        Severity.HIGH,
        0.75,
        "password assignment",
        (
            _c(
                r"\b(?:[a-z0-9]{1,32}[_-]){0,4}(?:password|passwd|passphrase|pwd|pass)"
                r"[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',;&()]{4,256})(?![^\s\"',;&)])"
            ),
            _c(r"(?:^|\s)--password[= ](?P<value>[^\s\"',;&()-][^\s\"',;&()]{3,255})"),
            _c(
                r"\b(?:mysql|mysqladmin|mysqldump)\b[^\n]{0,200}?\s-p"
                r"(?P<value>[^\s\"',;&()-][^\s\"',;&()]{3,255})"
            ),
        ),
        fields=_ALL_FIELDS,
        check=_secret_value_check,
    ),
)

_CMD_RULES: Final = (
    Rule(
        "command_injection.reverse_shell",
        _CMD,
        Severity.EMERGENCY,
        0.95,
        "reverse shell",
        (
            _c(r"\b(?:nc|ncat|netcat)\b[^\n;|&]{0,120}\s-[a-z]*[ec]\s*(?:/|\w)"),
            _c(r"/dev/(?:tcp|udp)/[\w.-]{1,253}/\d{1,5}"),
            _c(r"\bsocat\b[^\n]{0,200}\bexec:"),
            _c(r"\bmkfifo\b[^\n]{0,200}\b(?:nc|ncat|netcat|telnet)\b"),
            _c(r"\bsocket\.socket\b[^\n]{0,400}?(?:dup2|subprocess|pty\.spawn)"),
        ),
    ),
    Rule(
        "command_injection.rm_rf_root",
        _CMD,
        Severity.EMERGENCY,
        0.90,
        "recursive forced removal of /, ~, $HOME or *",
        (
            _c(
                r"\brm\s+(?:-[a-z]*r[a-z]*f[a-z]*|-[a-z]*f[a-z]*r[a-z]*|(?:-[rf]\s+){2}|"
                r"(?:--recursive\s+--force|--force\s+--recursive)\s+)\s*"
                r"(?:--no-preserve-root\s+)?(?:/\*?|~/?\*?|\*|\$HOME/?\*?|\$\{HOME\}/?|"
                r"\"/\"|'/'|\"\$HOME/?\"|\"\$\{HOME\}/?\")"
                r"(?=\s|$|;|&|\|)"
            ),
        ),
    ),
    Rule(
        "command_injection.fork_bomb",
        _CMD,
        Severity.CRITICAL,
        0.95,
        "shell fork bomb",
        (_c(r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:"),),
    ),
    Rule(
        "command_injection.curl_pipe_shell",
        _CMD,
        Severity.CRITICAL,
        0.90,
        "remote script piped into a shell",
        (
            _c(rf"\b(?:curl|wget|fetch)\b[^|\n]{{0,400}}\|\s*(?:sudo\s+)?{_SHELL}\b"),
            _c(rf"\b{_SHELL}\s+-c\s+[\"']?\$\(\s*(?:curl|wget)\b"),
            _c(rf"\b{_SHELL}\s+<\(\s*(?:curl|wget)\b"),
            _c(
                r"\b(?:iex|invoke-expression)\b[^\n]{0,200}\b(?:downloadstring|iwr|invoke-webrequest)\b"
            ),
        ),
    ),
    Rule(
        "command_injection.sensitive_file",
        _CMD,
        Severity.HIGH,
        0.85,
        "access to a system credential file",
        (
            _c(r"/etc/(?:passwd|shadow|gshadow|sudoers|master\.passwd)\b"),
            _c(r"(?:~|\$HOME|/home/[\w.-]{1,64}|/root)/\.ssh/(?:id_\w{1,16}|authorized_keys)\b"),
            _c(r"/proc/self/environ\b"),
            _c(r"(?:~|\$HOME|/home/[\w.-]{1,64}|/root)/\.aws/credentials\b"),
        ),
    ),
    Rule(
        "command_injection.chained_danger",
        _CMD,
        Severity.HIGH,
        0.80,
        "dangerous command chained after another (; && || | or newline)",
        (_c(rf"(?:;|&&|\|\||\|)\s*{_DANGER_CMD}"),),
    ),
    Rule(
        "command_injection.substitution",
        _CMD,
        Severity.HIGH,
        0.80,
        "command substitution running a dangerous command",
        (
            _c(
                r"\$\(\s*(?:sudo\s+)?(?:curl|wget|nc|ncat|bash|sh|zsh|python[0-9.]{0,4}|"
                r"perl|ruby|php|rm|whoami|id|uname|base64|env|printenv|cat\s+/etc/|"
                r"cat\s+~|chmod|chown|dd|mkfs)\b"
            ),
            _c(
                r"`\s*(?:sudo\s+)?(?:whoami|id|uname\s+-a|printenv|env|base64\s|nc\s|"
                r"cat\s+/etc/|rm\s+-[a-z]*r|curl\s[^`\n]{0,200}\|)"
            ),
        ),
    ),
    Rule(
        "command_injection.pipe_to_shell",
        _CMD,
        Severity.HIGH,
        0.75,
        "output piped into a shell or interpreter",
        (
            _c(
                rf"\|\s*(?:sudo\s+)?(?:{_SHELL}|python[0-9.]{{0,4}}|perl|ruby|php|node)"
                r"(?=\s*(?:$|[;&|)\n]|-(?:\s|$)|-c\b|-e\b|-s\b|-i\b))"
            ),
        ),
    ),
)

_PROSE: Final[View] = "prose"

_PI_RULES: Final = (
    Rule(
        "prompt_injection.ignore_instr",
        _PI,
        Severity.HIGH,
        0.90,
        "instruction to ignore previous / system instructions",
        (
            _c(
                r"\b(?:ignore|disregard|forget|override|bypass|skip|discard|abandon)\s+"
                r"(?:(?:all|any|every|the|your|my|of|these|those|everything|earlier|that)\s+){0,3}"
                r"(?:previous|prior|preceding|above|earlier|original|initial|system|safety|"
                r"developer|existing|current|old)\s+(?:\w+\s+)?"
                r"(?:instructions?|prompts?|rules|guidelines|directives|constraints|policies|"
                r"messages?|commands|orders|programming|guardrails)\b"
            ),
            _c(
                r"\b(?:ignore|disregard|forget)\s+(?:all|everything)\s+(?:(?:you\s+(?:were|have\s+been)"
                r"\s+told)|(?:that\s+)?(?:came\s+)?before)\b"
            ),
            _c(
                r"\b(?:ignore|disregard|override|bypass)\s+(?:(?:all|any|every)\s+(?:of\s+)?)?"
                r"your\s+(?:instructions|rules|guidelines|directives|constraints|programming|"
                r"guardrails|restrictions)\b"
            ),
        ),
        view=_PROSE,
        fields=_ALL_FIELDS,
    ),
    Rule(
        "prompt_injection.jailbreak",
        _PI,
        Severity.HIGH,
        0.85,
        "jailbreak phrasing",
        (
            _c(
                r"\b(?:jailbreak(?:s|ed|ing)?|jailbroken|dan\s+mode|developer\s+mode\s+"
                r"(?:enabled|on|activated)|do\s+anything\s+now|no\s+(?:ethical|moral|safety)\s+"
                r"(?:guidelines|constraints|restrictions|limits|filters)|"
                r"(?:respond|answer|reply|act|operate|behave|talk|speak|output|write)\w{0,3}\s+"
                r"(?:\w+\s+){0,2}(?:without|free\s+(?:of|from))\s+(?:any\s+)?"
                r"(?:restrictions|filters|limitations|"
                r"censorship|guardrails|content\s+polic(?:y|ies))|"
                r"(?:bypass|disable|turn\s+off)\s+(?:the\s+|your\s+)?(?:safety|content|moderation)"
                r"\s+(?:filters?|polic(?:y|ies)|guardrails|checks))\b"
            ),
        ),
        view=_PROSE,
        fields=_ALL_FIELDS,
    ),
    Rule(
        "prompt_injection.system_prompt",
        _PI,
        Severity.HIGH,
        0.85,
        "attempt to reveal the system prompt",
        (
            _c(
                r"\b(?:reveal|show|print|display|output|repeat|leak|dump|tell\s+me|what\s+(?:is|are)|"
                r"give\s+me|recite|echo|copy)\s+(?:\w+\s+){0,3}(?:system|hidden|initial|original|"
                r"developer|secret|internal)\s+(?:prompt|instructions|message|rules)\b"
            ),
        ),
        view=_PROSE,
        fields=_ALL_FIELDS,
    ),
    Rule(
        "prompt_injection.fake_system_tag",
        _PI,
        Severity.HIGH,
        0.80,
        "forged system / role marker",
        (
            _c(r"\[\s*/?\s*(?:system|inst|sys)\s*\]"),
            _c(r"<\s*/?\s*(?:system|sys)\s*>"),
            _c(r"<<\s*/?\s*sys\s*>>"),
            _c(r"<\|\s*(?:im_start|im_end|system|endoftext)\s*\|>"),
            _c(r"(?<!#)#{2,16}\s*(?:system|new\s+instructions)\s*(?::|#|$)"),
            _c(r"(?:^|\n|\s)(?:system|assistant)\s*:\s*(?:you|new|ignore|override)\b"),
        ),
        view=_PROSE,
        fields=_ALL_FIELDS,
    ),
    Rule(
        "prompt_injection.role_override",
        _PI,
        Severity.HIGH,
        0.75,
        "attempt to override the agent's role",
        (
            _c(
                r"\byou\s+are\s+now\s+(?!(?:a\s+|an\s+)?(?:member|subscriber|subscribed|logged|"
                r"signed|registered|connected|enrolled|ready|able|eligible|verified|set\b|"
                r"all\s+set|in\s+the\s+queue|on\s+the\s+list)\b)"
                r"(?:an?\s+|in\s+|my\s+|the\s+|dan\b|free\b|unrestricted|unfiltered|jailbroken|"
                r"no\s+longer|acting|going\s+to|allowed|permitted|evil|root|admin)"
            ),
            _c(
                r"\byou\s+are\s+no\s+longer\s+(?:bound|restricted|limited|an?\s+(?:ai|assistant))\b"
            ),
            _c(r"\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must|shall|can)\b"),
            _c(
                r"\b(?:act|behave|respond)\s+as\s+(?:if\s+you\s+(?:are|were)\s+)?(?:an?\s+)?"
                r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|dan)\b"
            ),
            _c(
                r"\bpretend\s+(?:that\s+)?you\s+(?:are|have)\s+(?:no|not|an?\s+(?:unrestricted|evil))\b"
            ),
            _c(r"\bnew\s+(?:system\s+)?(?:instructions|persona|role)\s*:"),
        ),
        view=_PROSE,
        fields=_ALL_FIELDS,
    ),
    Rule(
        "prompt_injection.roleplay",
        _PI,
        Severity.MEDIUM,
        0.70,
        "role-play framing used to bypass rules",
        (
            _c(
                r"\b(?:let'?s\s+play\s+a\s+game\s+(?:where|in\s+which)|role-?play\s+as\s+an?\s+"
                r"(?:ai|assistant|model|chatbot)\s+(?:that|who|with(?:out)?)|stay\s+in\s+character"
                r"\s+(?:no\s+matter|whatever|even)|in\s+this\s+(?:hypothetical|fictional)\s+"
                r"(?:world|scenario|story)\s*,?\s+(?:you|there\s+are\s+no|rules)|"
                r"as\s+an?\s+ai\s+(?:without|with\s+no)\s+(?:rules|restrictions|limits))"
            ),
        ),
        view=_PROSE,
        fields=_ALL_FIELDS,
    ),
)

_EXFIL_RULES: Final = (
    Rule(
        "data_exfiltration.encoded_dump",
        _EXFIL,
        Severity.CRITICAL,
        0.90,
        "database dump or encoded data piped to a network client",
        (
            _c(
                r"\b(?:mysqldump|pg_dump(?:all)?|mongodump|mongoexport|sqlite3\s+\S{1,256}\s+\.dump|"
                r"base64|xxd|openssl\s+enc|gpg\s+-c|tar\s+-?c\w*|zip\s+-r)\b[^\n]{0,400}?\|\s*"
                r"(?:sudo\s+)?(?:curl|wget|nc|ncat|netcat|ssh|socat|telnet|openssl\s+s_client)\b"
            ),
            _c(
                r"\b(?:curl|wget)\b[^\n]{0,300}(?:-d|--data(?:-binary|-raw|-urlencode)?)[\s=]*"
                r"[\"']?\$\(\s*(?:base64|cat|mysqldump|pg_dump|tar|gzip|env|printenv)\b"
            ),
        ),
    ),
    Rule(
        "data_exfiltration.upload_external",
        _EXFIL,
        Severity.HIGH,
        0.80,
        "file upload to an external host",
        (
            _c(
                r"\b(?:curl|wget|http|https|invoke-webrequest|invoke-restmethod|iwr|irm)\b"
                r"[^\n]{0,400}?(?:\s-d\s*@|\s--data(?:-binary|-raw|-urlencode)?[\s=]*@|"
                r"\s-F\s*[\"']?[\w-]{1,64}=@|\s-T\s|\s--upload-file\b|\s--post-file\b|\s-infile\b)"
            ),
            _c(r"\brequests\.(?:post|put)\([^)]{0,400}?(?:files\s*=|data\s*=\s*open\()"),
        ),
        check=_external_text_check,
    ),
    Rule(
        "data_exfiltration.drop_site",
        _EXFIL,
        Severity.HIGH,
        0.80,
        "known paste / file-drop / tunnelling site",
        (
            _c(
                r"\b(?:pastebin\.com|paste\.ee|hastebin\.com|ghostbin\.\w+|transfer\.sh|"
                r"file\.io|0x0\.st|anonfiles\.com|webhook\.site|requestbin\.\w+|"
                r"(?<![\w-])[\w-]{1,63}\.ngrok(?:-free)?\.(?:io|app)|interactsh\.\w+|burpcollaborator\.net|"
                r"pipedream\.net)\b"
            ),
        ),
    ),
    Rule(
        "data_exfiltration.sql_outfile",
        _EXFIL,
        Severity.HIGH,
        0.80,
        "SQL writing query results to a file or program",
        (
            _c(r"\binto\s+(?:outfile|dumpfile)\b"),
            _c(r"\bcopy\s+[^;]{1,400}?\bto\s+program\b"),
        ),
        view="sql",
    ),
    Rule(
        "data_exfiltration.remote_copy",
        _EXFIL,
        Severity.HIGH,
        0.75,
        "scp / rsync / sftp to an external remote host",
        (
            _c(
                r"\b(?:scp|rsync|sftp)\b[^\n;|&]{0,300}?\s(?:[\w.-]{1,64}@)?"
                r"(?P<host>[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63}){0,8}|\[[0-9a-f:.]{2,45}\]):"
                r"(?!//)[^\s;|&]{0,1024}\s*(?:$|[;|&\n])"
            ),
        ),
        check=_remote_host_check,
    ),
    Rule(
        "data_exfiltration.bulk_external",
        _EXFIL,
        Severity.HIGH,
        0.70,
        "bulk export of data to an external destination",
        (
            _c(
                r"\b(?:export|dump|send|upload|post|e-?mail|forward|transfer|copy|sync|share|"
                r"push|leak)\w{0,4}\b[^\n]{0,120}?\b(?:all|entire|full|whole|complete|every)\b"
                r"[^\n]{0,80}?\b(?:database|db|tables?|records|rows|customers?|users?|data|"
                r"dataset|logs|emails|files|contacts|accounts)\b"
            ),
        ),
        check=_external_dest_check,
    ),
)

#: All detectors, in a fixed order.
DETECTORS: Final[tuple[Detector, ...]] = (
    Detector("personal_data", _PERSONAL, _PERSONAL_RULES),
    Detector("destructive_database", _DB, _DB_RULES),
    Detector("credentials", _CRED, _CRED_RULES),
    Detector("command_injection", _CMD, _CMD_RULES),
    Detector("prompt_injection", _PI, _PI_RULES),
    Detector("data_exfiltration", _EXFIL, _EXFIL_RULES),
)

#: Every rule, in detector order.
RULES: Final[tuple[Rule, ...]] = tuple(r for d in DETECTORS for r in d.rules)

#: Upper bound on ``len(detect(action))``: one finding per rule, plus ``intent.mismatch``.
MAX_FINDINGS: Final = len(RULES) + 1

# the standard library's regex parser and its case-insensitivity table (no public names;
# stable since 3.11)
_sre_parser: Any = importlib.import_module("re._parser")
_sre_constants: Any = importlib.import_module("re._constants")
_sre_casefix: Any = importlib.import_module("re._casefix")


def _fold_table() -> dict[int, str | None]:
    """``str.translate`` table completing ``str.lower`` into a fold that a case-insensitive
    match never separates (see :class:`_Prefilter`)."""
    # characters that re.IGNORECASE treats as equal beyond their lowercase (``s`` and
    # ``ſ``, ``i`` and ``ı``, ``σ`` and ``ς``, ...): one representative per class
    rep = {c: c for c in _sre_casefix._EXTRA_CASES}
    for _ in range(len(rep)):  # merge the classes to a fixed point
        for c, others in _sre_casefix._EXTRA_CASES.items():
            rep[c] = min([rep[c], *(rep[o] for o in others)])
    table: dict[int, str | None] = {c: chr(r) for c, r in rep.items() if c != r}
    table[0x307] = None  # "İ".lower() is "i" + U+0307; re.IGNORECASE matches "İ" as "i"
    return table


_FOLD_TABLE: Final = _fold_table()


def _fold(text: str) -> str:
    """``text`` lower-cased and case-folded so that, character by character, two
    characters that a case-insensitive regex treats as equal get the same fold."""
    if text.isascii():
        return text.lower()
    return text.lower().translate(_FOLD_TABLE)


#: Largest finite set of strings the literal analysis tracks for one regex node.
_EXACT_LIMIT: Final = 64
_DIGIT_CHARS: Final = "0123456789"
_DIGITS: Final = frozenset(_DIGIT_CHARS)
#: Word characters of folded ASCII text (``\w`` there), and its letters.
_WORD_CHARS: Final = frozenset(string.ascii_lowercase + _DIGIT_CHARS + "_")
_LETTERS: Final = frozenset(string.ascii_lowercase)
#: Characters frequent in text: letters, digits, whitespace, common punctuation.
_COMMON: Final = frozenset(string.ascii_letters + string.digits + string.whitespace + ".,-'/_()\"")
#: Most required sets checked per pattern (the most selective ones).
_MAX_REQUIREMENTS: Final = 4


class _Need(NamedTuple):
    """A required set of a pattern: every match contains one of ``literals`` (folded).
    With ``word_start``, that occurrence starts a word: it follows a word break in the
    pattern and every literal starts with a word character."""

    literals: frozenset[str]
    word_start: bool


_DIGIT_NEED: Final = _Need(_DIGITS, False)


def _alternation(words: Iterable[str]) -> str:
    """A regex matching, at a position, the longest of ``words`` that starts there (a trie
    of alternations, so the engine compares one character per branch)."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(root)


def _ascii_key(literal: str, word_start: bool) -> tuple[Literal["words", "chars"], str]:
    """Which scan of folded ASCII text looks for ``literal`` (see :class:`_Prefilter`), and
    what it looks for: the literal, or for ``"chars"`` its suffix from its first character
    that is not a letter, if it has one."""
    if word_start:
        return "words", literal
    for k, ch in enumerate(literal):
        if ch not in _LETTERS:
            return "chars", literal[k:]
    return "chars", literal


# one pattern of a rule on one field: its bit, the further required sets (each the folded
# literal, or a regex of the folded literals, one of which must occur), the pattern
_Slot = tuple[int, tuple[str | re.Pattern[str], ...], re.Pattern[str]]


@dataclass(frozen=True, slots=True)
class _Group:
    """The patterns of one rule on one field, as bits of the prefilter's masks."""

    rule: Rule
    name: FieldName
    view: View  # the rule's view
    key: tuple[FieldName, View]  # (name, view)
    simple: bool  # the rule has no check and no min_distinct
    mask: int  # the bits of these patterns
    rule_mask: int  # the bits of the rule's patterns on all its fields
    slots: tuple[_Slot, ...]  # in pattern order
    plain: bool  # no slot has further sets
    finding: Violation  # what the rule reports when it fires on this field


# one scan of a field: the text it reads ("raw" or a view), the string put before that
# text, the finder of the literals found (a list), literal -> bits it sets
_Scan = tuple[View, str, Callable[[str], list[str]], dict[str, int]]
# a field's screen: the bits always set, and the scans
_Screen = tuple[int, tuple[_Scan, ...]]


class _Prefilter:
    """Literal keywords that must appear for a pattern to match: a cheap test before the
    regexes.  It only skips work: :func:`detect` gives the same findings without it.

    Requirements.  For each pattern, :meth:`requirements` walks its parse tree and finds
    sets of strings such that every match contains one string of each set: a run of the
    top-level sequence whose items match a small finite set of strings (literal
    characters, small character classes, short bounded repeats, zero-width assertions,
    alternations of such runs; joined as a cross product), the sets of a group or of a
    repeat taken at least once, or the union over the branches of an alternation of each
    branch's best set (a run just before an alternation is distributed into its branches,
    undoing the parser's common-prefix factoring).  A set whose strings start with a word
    character and follow a word break in the pattern (``\\b``, ``^``, a non-word
    character, ``\\s``, a look-behind excluding word characters) *starts words*.  Sets
    are ranked by :func:`_rank` (longer and rarer strings first, then fewer strings);
    :meth:`required_literals` is the best one, and the first set used is the best one
    that the ASCII scans find without stopping at letters (:func:`_scans_letters`), when
    there is one.  A pattern with no set that needs a decimal digit requires one of
    ``0``-``9`` in ASCII text; a pattern with neither is always run.  A rule can fire on a
    field only through a pattern whose (up to :data:`_MAX_REQUIREMENTS`) sets all occur
    there and, in an ASCII field, with at least :meth:`min_digits` digits (``\\d`` is
    ``[0-9]`` in ASCII text); only those patterns are run.

    Soundness.  Texts and literals are compared folded (:func:`_fold`: ``str.lower`` plus
    the equivalences of ``re.IGNORECASE`` beyond lowercase, so ``ſ``, ``ı``, ``İ`` and the
    Kelvin sign fold like ``s``, ``i``, ``i`` and ``k``), which can only widen what counts
    as present, never narrow it, so the test has no false negatives.  Literals of the
    ``sql`` and ``prose`` views are looked for in the raw field when that is sound (they
    contain no whitespace, and for ``prose`` the field is ASCII, whose ``prose`` view is
    the raw text with whitespace collapsed): a view only drops comments and folds
    whitespace, so a literal without whitespace present in the view is present in the raw
    text, a word start there is one in the raw text, and a view has no more digits.

    Scans.  Each (rule, field, pattern) is one bit of a mask, in rule order, then field
    order, then pattern order.  A field's scans set the bits of the patterns whose first
    set has a literal they find (a literal found counts for every literal it contains),
    with trie-shaped regexes that report the longest literal starting where they look.
    In an ASCII field they read the folded raw text twice: literals that start words at
    each word start (after a non-word character, a space being put before the text);
    the others at each character that starts one of them (a character class lets the
    regex engine skip all other characters), a literal with a letter first being looked
    for from its first other character on when it has one (a weaker but sound test; the
    whole set is checked again later).  In a non-ASCII field every literal is looked for
    at every position.  Then the bits of patterns needing more digits than the field has
    are cleared, and :meth:`findings` walks the set bits rule by rule, checks the further
    sets of those patterns with substring tests on the folded raw field (skipped, so
    taken as met, for the ``prose`` view of a non-ASCII field), and runs the patterns
    left.  A benign text then costs a fold and a few regex passes per field, instead of
    some eighty regex scans.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        entries: dict[FieldName, list[tuple[View, int, _Need | None]]] = {
            name: [] for name in _ALL_FIELDS
        }
        groups: list[_Group] = []
        # per field: fewest digits -> bits of the patterns that need them
        limits: dict[FieldName, dict[int, int]] = {name: {} for name in _ALL_FIELDS}
        analysis = {
            p: (self._requirements(tree), self._digits(tree))
            for rule in rules
            for p in rule.patterns
            for tree in [_parse(p)]
        }
        bit = 0
        for rule in rules:
            rule_first = bit
            specs: list[tuple[FieldName, tuple[_Slot, ...]]] = []
            for name in rule.fields:
                slots: list[_Slot] = []
                for pattern in rule.patterns:
                    needs, digits = analysis[pattern]
                    first = needs[0] if needs else None
                    entries[name].append((rule.view, 1 << bit, first))
                    # the first set again when its scan looks for weaker suffixes, then the
                    # further sets, all looked for in the folded raw field: keep those that
                    # can be (see the class docstring)
                    weak = first is not None and any(
                        _ascii_key(lit, first.word_start)[1] != lit for lit in first.literals
                    )
                    checks = ([first] if weak and first is not None else []) + list(needs[1:])
                    further = tuple(
                        _needle(need.literals)
                        for need in sorted(checks, key=lambda n: len(n.literals))  # cheap first
                        if rule.view == "raw"
                        or not any(ch.isspace() for s in need.literals for ch in s)
                    )
                    slots.append((1 << bit, further, pattern))
                    if digits:
                        limits[name][digits] = limits[name].get(digits, 0) | 1 << bit
                    bit += 1
                specs.append((name, tuple(slots)))
            rule_mask = (1 << bit) - (1 << rule_first)
            for name, group_slots in specs:
                group = _Group(
                    rule=rule,
                    name=name,
                    view=rule.view,
                    key=(name, rule.view),
                    simple=rule.check is None and rule.min_distinct <= 1,
                    mask=_or_all(s[0] for s in group_slots),
                    rule_mask=rule_mask,
                    slots=group_slots,
                    plain=not any(s[1] for s in group_slots),
                    finding=_finding(rule, name),
                )
                groups.extend(group for _ in group_slots)
        self._group_at: tuple[_Group, ...] = tuple(groups)
        self._groups: dict[tuple[str, FieldName], _Group] = {
            (g.rule.name, g.name): g for g in groups
        }
        # by rule identity: the rule and the bits of its patterns on all its fields
        self._rule_masks: dict[int, tuple[Rule, int]] = {
            id(g.rule): (g.rule, g.rule_mask) for g in groups
        }
        self._screens: dict[tuple[FieldName, bool], _Screen] = {
            (name, ascii_): self._screen(entries[name], ascii_)
            for name in _ALL_FIELDS
            for ascii_ in (True, False)
        }
        self._digit_limits: dict[FieldName, tuple[tuple[int, int], ...]] = {
            name: tuple(sorted(limits[name].items())) for name in _ALL_FIELDS
        }
        self._digit_bits: dict[FieldName, int] = {
            name: _or_all(limits[name].values()) for name in _ALL_FIELDS
        }

    @staticmethod
    def _screen(entries: list[tuple[View, int, _Need | None]], ascii_: bool) -> _Screen:
        always = 0
        # per text looked at: per scan kind, looked-for string -> bits
        wanted: dict[View, dict[str, dict[str, int]]] = {}
        for view, bit, need in entries:
            if need is None or (need is _DIGIT_NEED and not ascii_):
                always |= bit
                continue
            # where to look: the raw text when sound (see the class docstring), else the view
            spaced = any(ch.isspace() for lit in need.literals for ch in lit)
            raw_ok = view == "raw" or (not spaced and (view == "sql" or ascii_))
            where: View = "raw" if need is _DIGIT_NEED or raw_ok else view
            tables = wanted.setdefault(where, {})
            for lit in need.literals:
                kind, key = _ascii_key(lit, need.word_start) if ascii_ else ("every", lit)
                table = tables.setdefault(kind, {})
                table[key] = table.get(key, 0) | bit
        scans: list[_Scan] = []
        for where, tables in wanted.items():
            every = [(key, bits) for table in tables.values() for key, bits in table.items()]
            for kind, table in sorted(tables.items()):
                # a string found counts for every looked-for string it contains
                closed = {key: _or_all(b for other, b in every if other in key) for key in table}
                trie = _alternation(table)
                if kind == "words":  # at each word start: after a non-word character
                    prefix, regex = " ", f"[^a-z0-9_](?=({trie}))"
                elif kind == "chars":  # at each character that starts one
                    first = "".join(sorted({re.escape(key[0]) for key in table}))
                    prefix, regex = "", f"[{first}](?<=(?=({trie}))[{first}])"
                else:  # at every position
                    prefix, regex = "", f"(?=({trie}))"
                scans.append((where, prefix, re.compile(regex).findall, closed))
        return always, tuple(scans)

    def field_mask(self, av: _ActionView, name: FieldName) -> int:
        """The bits of the patterns whose best required set occurs in field ``name``;
        records the folded raw field in ``av.folded``."""
        raw = av.text(name, "raw")
        if not raw:
            av.folded[name] = (raw, True)
            return 0
        ascii_ = raw.isascii()
        always, scans = self._screens[name, ascii_]
        mask = always
        folded = raw.lower() if ascii_ else _fold(raw)
        av.folded[name] = (folded, ascii_)
        for where, prefix, finder, bits in scans:
            text = folded if where == "raw" else _fold(av.text(name, where))
            for found in finder(prefix + text if prefix else text):
                mask |= bits[found]
        if ascii_ and mask & self._digit_bits[name]:
            # drop the patterns that need more digits than the field has
            digits = sum(map(folded.count, _DIGIT_CHARS))
            for fewest, bits_ in self._digit_limits[name]:
                if digits < fewest:
                    mask &= ~bits_
        return mask

    @staticmethod
    def _kept(group: _Group, bits: int, av: _ActionView) -> list[re.Pattern[str]]:
        """The patterns of ``group`` among ``bits`` (some of ``group.mask``) whose further
        required sets occur."""
        if group.plain:
            if bits == group.mask:
                return list(group.rule.patterns)
            return [s[2] for s in group.slots if bits & s[0]]
        folded, ascii_ = av.folded[group.name]
        sets_ok = ascii_ or group.view != "prose"
        kept: list[re.Pattern[str]] = []
        for bit, further, pattern in group.slots:
            if not bits & bit:
                continue
            if sets_ok:
                for need in further:
                    if (need not in folded) if isinstance(need, str) else not need.search(folded):
                        break
                else:
                    kept.append(pattern)
                continue
            kept.append(pattern)
        return kept

    def kept(self, av: _ActionView, rule: Rule, name: FieldName) -> bool:
        """Whether some pattern of ``rule`` passes the prefilter on field ``name``."""
        group = self._groups.get((rule.name, name))
        if group is None:
            return False
        bits = av.field_mask(name) & group.mask
        return bits != 0 and bool(self._kept(group, bits, av))

    def findings(self, av: _ActionView, detector: Detector | None = None) -> list[Violation]:
        """The findings of ``detector`` (default: all detectors), in rule order, each rule
        reported for the first of its fields where one of its kept patterns fires."""
        masks = av.masks
        todo = 0
        for name in _ALL_FIELDS:
            mask = masks.get(name)
            if mask is None:
                mask = masks[name] = self.field_mask(av, name)
            todo |= mask
        if detector is not None:
            todo &= self.rules_mask(detector.rules) or 0
        found: list[Violation] = []
        group_at = self._group_at
        views = av.views
        while todo:
            group = group_at[(todo & -todo).bit_length() - 1]
            bits = todo & group.mask
            todo &= ~group.mask
            patterns: Sequence[re.Pattern[str]]
            if not group.plain:
                patterns = self._kept(group, bits, av)
                if not patterns:
                    continue
            elif bits == group.mask:
                patterns = group.rule.patterns
            else:
                patterns = [s[2] for s in group.slots if bits & s[0]]
            text = views.get(group.key)
            if text is None:
                text = av.text(*group.key)
            if not text:
                continue
            if group.simple:  # Rule._fires without a check: the first match decides
                for pattern in patterns:
                    if pattern.search(text) is not None:
                        break
                else:
                    continue
            elif not group.rule._fires(patterns, text, av):
                continue
            found.append(group.finding)
            todo &= ~group.rule_mask
        return found

    def rules_mask(self, rules: Iterable[Rule]) -> int | None:
        """The bits of ``rules``' patterns, or ``None`` unless they are rules of this
        prefilter, in its order (as :meth:`findings` reports them)."""
        mask = 0
        for rule in rules:
            known = self._rule_masks.get(id(rule))
            if known is None or known[0] is not rule or known[1] <= mask:
                return None
            mask |= known[1]
        return mask

    @classmethod
    def requirements(cls, pattern: re.Pattern[str]) -> tuple[_Need, ...]:
        """Required sets of ``pattern``, every match containing one literal of each: the
        best :data:`_MAX_REQUIREMENTS` of them, best first (see the class docstring); the
        digit set ``0``-``9`` when there are none but a match needs a decimal digit
        (``\\d``); ``()`` when nothing is known."""
        return cls._requirements(_parse(pattern))

    @classmethod
    def _requirements(cls, tree: list[tuple[Any, Any]]) -> tuple[_Need, ...]:
        found: dict[frozenset[str], bool] = {}  # in rank order; word start if ever known
        for strings, at_word in sorted(
            cls._sequence(tree, {""}, False), key=lambda c: _rank(c[0]), reverse=True
        ):
            literals = frozenset(_fold(s) for s in strings)
            found[literals] = found.get(literals, False) or at_word
        if not found:
            return (_DIGIT_NEED,) if cls._digits(tree) else ()
        needs = [
            _Need(lits, at_word and all(s[0] in _WORD_CHARS for s in lits))
            for lits, at_word in found.items()
        ]
        # first, when there is one, a set whose ASCII scan skips letters (see _ascii_key)
        needs.sort(key=_scans_letters)
        # after the best set, skip sets with a frequent one-character string (a letter, a
        # digit, common punctuation): finding them costs more than they save
        rest = [n for n in needs[1:] if not any(s in _COMMON for s in n.literals)]
        return (needs[0], *rest[: _MAX_REQUIREMENTS - 1])

    @classmethod
    def required_literals(cls, pattern: re.Pattern[str]) -> frozenset[str] | None:
        """The literals of the best-ranked required set (:func:`_rank`; ``None`` when there
        is none)."""
        found = _best(cls._sequence(_parse(pattern), {""}, False))
        return None if found is None else frozenset(_fold(s) for s in found[0])

    @classmethod
    def _sequence(
        cls, items: list[tuple[Any, Any]], prefix: set[str], at_word: bool
    ) -> list[tuple[set[str], bool]]:
        """Required sets of a sequence of nodes that follows a run matching ``prefix``,
        each with whether its strings start at a word break (after a non-word character,
        at ``\\b`` or at the start; ``at_word`` tells it for ``prefix``)."""
        candidates: list[tuple[set[str], bool]] = []
        run, run_at_word = set(prefix), at_word
        # whether every match so far ends at a word break
        end_break = all((not _is_word(s[-1])) if s else at_word for s in run)
        for op, arg in items:
            exact = cls._exact(op, arg)
            after = cls._break_after(op, arg, end_break)
            if exact is not None:
                if len(run) * len(exact) <= _EXACT_LIMIT:
                    run = {a + b for a in run for b in exact}
                else:
                    candidates.append((run, run_at_word))
                    run, run_at_word = exact, end_break
                end_break = after
                if run == {""}:  # nothing consumed yet: the run starts here
                    run_at_word = end_break
                continue
            candidates.append((run, run_at_word))
            candidates.extend(cls._node(op, arg, run, run_at_word))
            run, run_at_word, end_break = {""}, after, after
        candidates.append((run, run_at_word))
        # a string containing another of its set adds nothing: drop it (for a set at a
        # word break, only one that starts with another, which is at the break too)
        return [
            (
                {
                    s
                    for s in strings
                    if not any(t != s and (s.startswith(t) if at else t in s) for t in strings)
                },
                at,
            )
            for strings, at in candidates
            if "" not in strings
        ]

    @staticmethod
    def _word_break(op: Any, arg: Any) -> bool:
        """Whether the zero-width node holds only at a word break: ``\\b``, ``^``, ``\\A``,
        or a look-behind excluding every ASCII word character."""
        c = _sre_constants
        if op is c.AT:
            return arg in (c.AT_BOUNDARY, c.AT_BEGINNING, c.AT_BEGINNING_STRING)
        if op is not c.ASSERT_NOT or arg[0] != -1 or len(arg[1]) != 1:
            return False
        kind, members = next(iter(arg[1]))
        if kind is not c.IN:
            return False
        covered: set[str] = set()
        for k, v in members:
            if k is c.CATEGORY and v is c.CATEGORY_WORD:
                return True
            if k is c.LITERAL:
                covered.add(chr(v))
            elif k is c.RANGE:
                covered.update(map(chr, range(v[0], v[1] + 1)))
        return covered >= set(string.ascii_letters + string.digits + "_")

    @classmethod
    def _break_after(cls, op: Any, arg: Any, before: bool) -> bool:
        """Whether every match of the node ends at a word break, given whether it starts at
        one (``False``: not known)."""
        c = _sre_constants
        if cls._word_break(op, arg):
            return True
        if op is c.AT or op is c.ASSERT or op is c.ASSERT_NOT:  # zero-width
            return before
        if op is c.LITERAL:
            return not _is_word(chr(arg))
        if op is c.IN:
            return bool(arg) and all(
                (k is c.CATEGORY and v in (c.CATEGORY_SPACE, c.CATEGORY_NOT_WORD))
                or (k is c.LITERAL and not _is_word(chr(v)))
                for k, v in arg
            )
        if op is c.SUBPATTERN:
            return cls._break_after_all(list(arg[3]), before)
        if op is c.BRANCH:
            return all(cls._break_after_all(list(b), before) for b in arg[1])
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            # each repetition ends at a break whatever its start, and none means no move
            return cls._break_after_all(list(arg[2]), False) and (arg[0] >= 1 or before)
        return False

    @classmethod
    def _break_after_all(cls, items: list[tuple[Any, Any]], before: bool) -> bool:
        for op, arg in items:
            before = cls._break_after(op, arg, before)
        return before

    @classmethod
    def _node(
        cls, op: Any, arg: Any, prefix: set[str], at_word: bool
    ) -> list[tuple[set[str], bool]]:
        if op is _sre_constants.SUBPATTERN:
            return cls._sequence(list(arg[3]), prefix, at_word)
        if op is _sre_constants.BRANCH:
            union: set[str] = set()
            all_at_word = True
            for branch in arg[1]:
                inner = _best(cls._sequence(list(branch), prefix, at_word))
                if inner is None:
                    return []
                union |= inner[0]
                all_at_word = all_at_word and inner[1]
            return [(union, all_at_word)]
        if op in (_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT) and arg[0] >= 1:
            return cls._sequence(list(arg[2]), prefix, at_word)
        return []

    @classmethod
    def _exact(cls, op: Any, arg: Any) -> set[str] | None:
        """The strings a node matches, when they are few (at most :data:`_EXACT_LIMIT`)."""
        c = _sre_constants
        if op is c.LITERAL:
            return {chr(arg)}
        if op is c.AT or op is c.ASSERT or op is c.ASSERT_NOT:
            return {""}  # zero-width
        if op is c.IN:
            chars: set[str] = set()
            for kind, value in arg:
                if kind is c.LITERAL:
                    chars.add(chr(value))
                elif kind is c.RANGE and value[1] - value[0] < 16:
                    chars.update(map(chr, range(value[0], value[1] + 1)))
                else:  # NEGATE, CATEGORY, wide ranges
                    return None
            return chars or None
        if op is c.SUBPATTERN:
            return cls._exact_sequence(list(arg[3]))
        if op is c.BRANCH:
            union: set[str] = set()
            for branch in arg[1]:
                inner = cls._exact_sequence(list(branch))
                if inner is None:
                    return None
                union |= inner
            return union if len(union) <= _EXACT_LIMIT else None
        if op in (c.MAX_REPEAT, c.MIN_REPEAT) and arg[1] <= 4:
            lo, hi, body = arg
            inner = cls._exact_sequence(list(body))
            if inner is None:
                return None
            out: set[str] = set()
            power = {""}
            for k in range(hi + 1):
                if k >= lo:
                    out |= power
                if k < hi:
                    power = {a + b for a in power for b in inner}
                    if len(power) > _EXACT_LIMIT:
                        return None
            return out if len(out) <= _EXACT_LIMIT else None
        return None

    @classmethod
    def _exact_sequence(cls, items: list[tuple[Any, Any]]) -> set[str] | None:
        out = {""}
        for op, arg in items:
            exact = cls._exact(op, arg)
            if exact is None or len(out) * len(exact) > _EXACT_LIMIT:
                return None
            out = {a + b for a in out for b in exact}
        return out

    @classmethod
    def min_digits(cls, pattern: re.Pattern[str]) -> int:
        """The fewest ``\\d`` characters (decimal digits) a match of ``pattern`` contains."""
        return cls._digits(_parse(pattern))

    @classmethod
    def _digits(cls, items: list[tuple[Any, Any]]) -> int:
        c = _sre_constants
        total = 0
        for op, arg in items:
            if op is c.LITERAL:
                total += chr(arg) in _DIGITS
            elif op is c.IN:
                total += bool(arg) and all(
                    (k is c.CATEGORY and v is c.CATEGORY_DIGIT)
                    or (k is c.LITERAL and chr(v) in _DIGITS)
                    or (k is c.RANGE and 48 <= v[0] <= v[1] <= 57)
                    for k, v in arg
                )
            elif op is c.SUBPATTERN:
                total += cls._digits(list(arg[3]))
            elif op is c.BRANCH:
                total += min(cls._digits(list(b)) for b in arg[1])
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
                total += arg[0] * cls._digits(list(arg[2]))
        return total


def _parse(pattern: re.Pattern[str]) -> list[tuple[Any, Any]]:
    """The top-level sequence of ``pattern``'s parse tree."""
    return list(_sre_parser.parse(pattern.pattern, pattern.flags))


def _rank(strings: set[str]) -> tuple[int, int]:
    """How selective a required set is (higher is better): by its least selective string,
    then by fewer strings.  A string's score is its length, plus 1 when it has a character
    that is rarer in text (not a letter, digit, whitespace or common punctuation)."""
    return min(len(s) + any(ch not in _COMMON for ch in s) for s in strings), -len(strings)


def _scans_letters(need: _Need) -> bool:
    """Whether the ASCII scans look for ``need`` at letters not starting a word (a slower
    scan): it does not start words and has a literal of letters only."""
    return not need.word_start and any(
        _ascii_key(lit, False)[1][0] in _LETTERS for lit in need.literals
    )


def _is_word(ch: str) -> bool:
    """Whether ``ch`` is a word character (``\\w``)."""
    return ch.isalnum() or ch == "_"


def _best(candidates: list[tuple[set[str], bool]]) -> tuple[set[str], bool] | None:
    return max(candidates, key=lambda c: _rank(c[0])) if candidates else None


def _needle(literals: frozenset[str]) -> str | re.Pattern[str]:
    """What finds one of ``literals`` in a folded text: the literal itself when it is
    alone (for ``in``), else a regex of them."""
    if len(literals) == 1:
        return next(iter(literals))
    return re.compile(_alternation(literals))


def _or_all(values: Iterable[int]) -> int:
    out = 0
    for v in values:
        out |= v
    return out


_PREFILTER: Final = _Prefilter(RULES)


def rule_table() -> list[tuple[str, ViolationType, Severity, float, str]]:
    """``(name, type, severity, confidence, description)`` of every rule, in order."""
    return [(r.name, r.type, r.severity, r.confidence, r.description) for r in RULES]


# --------------------------------------------------------------------------------------------
# Stated intent vs action
# --------------------------------------------------------------------------------------------

#: Violation types that mean the action changes or ships data (contradicting read-only).
SIDE_EFFECT_TYPES: Final = frozenset(
    {ViolationType.DESTRUCTIVE_DATABASE, ViolationType.COMMAND_INJECTION, _EXFIL}
)
#: ``action_type`` values (case-insensitive) that declare a read-only action.
READ_ONLY_ACTION_TYPES: Final = frozenset(
    {
        "read",
        "query",
        "view",
        "search",
        "summarize",
        "summarise",
        "report",
        "list",
        "get",
        "fetch",
        "inspect",
        "analyze",
        "analyse",
        "read_only",
        "readonly",
    }
)
#: Share of the remaining doubt ``1 - c`` removed from side-effect findings on a mismatch.
INTENT_MISMATCH_BOOST: Final = 0.5
_MISMATCH_SEVERITY: Final = Severity.HIGH
_MISMATCH_CONFIDENCE: Final = 0.80

_READ_INTENT_RE: Final = _c(rf"\b(?:{_READ_WORDS})\b")
_WRITE_INTENT_RE: Final = _c(rf"\b(?:{_WRITE_WORDS})\b")


def read_only_claim(action: Action) -> str | None:
    """How the action declares itself read-only (``"action type 'read'"`` or
    ``"stated intent 'summarize'"``), or ``None`` when it does not."""
    kind = action.action_type.strip().lower()
    if kind in READ_ONLY_ACTION_TYPES:
        return f"action type {kind!r}"
    intent = _prose_view(action.stated_intent)
    if not intent or _WRITE_INTENT_RE.search(intent) is not None:
        return None
    m = _READ_INTENT_RE.search(intent)
    if m is None:
        return None
    word = _WS_RE.sub(" ", m.group(0).lower())
    return f"stated intent {word!r}"


def _side_effects(found: Sequence[Violation]) -> bool:
    return any(v.type in SIDE_EFFECT_TYPES for v in found)


def _apply_claim(found: list[Violation], claim: str | None) -> list[Violation]:
    """The rules' findings adjusted for the action's read-only ``claim`` (None: the action
    makes none, or ``found`` has no side-effect finding): see the module docstring."""
    if claim is None or not found:
        return found
    side = [v for v in found if v.type in SIDE_EFFECT_TYPES]
    if not side:
        return found
    out = [
        replace(v, confidence=min(1.0, v.confidence + (1.0 - v.confidence) * INTENT_MISMATCH_BOOST))
        if v.type in SIDE_EFFECT_TYPES
        else v
        for v in found
    ]
    worst = min(side, key=lambda v: (-v.severity, v.type.value, v.detector))
    out.append(
        Violation(
            type=worst.type,
            severity=_MISMATCH_SEVERITY,
            confidence=_MISMATCH_CONFIDENCE,
            message=(
                f"{claim} declares a read-only action, but the action has "
                f"{worst.type.value} findings"
            ),
            detector="intent.mismatch",
        )
    )
    return out


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _sort_key(v: Violation) -> tuple[int, str, str, float, str]:
    return (-int(v.severity), v.type.value, v.detector, -v.confidence, v.message)


def detect(action: Action) -> list[Violation]:
    """Run every detector on ``action``.

    Returns at most :data:`MAX_FINDINGS` findings, one per firing rule (plus
    ``intent.mismatch``, see the module docstring), sorted by severity (descending), then
    type, then rule name.  Deterministic: the same action always gives the same list.
    Does not validate the action (see :func:`nethical_grpc.governance.decision.validate_action`).
    """
    return _settled(*_rules_and_claim(action))


def _rules_and_claim(action: Action) -> tuple[list[Violation], str | None]:
    """The rules' findings, and the action's read-only claim when it changes them."""
    found = _findings(_ActionView(action))
    return found, read_only_claim(action) if _side_effects(found) else None


def _settled(found: list[Violation], claim: str | None) -> list[Violation]:
    """The rules' findings as :func:`detect` answers them: intent applied, sorted."""
    found = _apply_claim(found, claim)
    if len(found) > 1:
        found.sort(key=_sort_key)
    return found


#: Every finding a rule can report (one per rule and field), in rule order: the same in
#: every process running this code, so a finding travels between processes as its index.
FINDINGS: Final[tuple[Violation, ...]] = tuple(
    _finding(rule, name) for rule in RULES for name in rule.fields
)
_FINDING_INDEX: Final[dict[Violation, int]] = {v: i for i, v in enumerate(FINDINGS)}

#: What :func:`detect_encoded` gives: indexes into :data:`FINDINGS` and a read-only claim.
EncodedFindings = tuple[tuple[int, ...], str | None]


def detect_encoded(action: Action) -> EncodedFindings:
    """:func:`detect`'s answer in a compact form for another process: the indexes in
    :data:`FINDINGS` of the rules' findings, and the action's read-only claim when it
    changes them (:func:`read_only_claim`; else ``None``).  :func:`decode_findings` turns
    it into exactly :func:`detect`'s list."""
    found, claim = _rules_and_claim(action)
    return tuple([_FINDING_INDEX[v] for v in found]), claim


def decode_findings(indexes: Sequence[int], claim: str | None) -> list[Violation]:
    """The findings that :func:`detect_encoded` encoded (sorted, intent applied)."""
    return _settled([FINDINGS[i] for i in indexes], claim)
