"""Input rules shared by every server: names, labels, time ranges, quantiles."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence, Sized

import numpy as np

from nethical_grpc.errors import FieldViolation, InvalidArgument

# MAX_ABS_VALUE: larger magnitudes could overflow a window's sum or M2 to infinity (and a
# store's sums)
from nethical_grpc.storage.timeseries.model import MAX_ABS_VALUE as MAX_ABS_VALUE
from nethical_grpc.storage.timeseries.model import MAX_LABELS_BYTES, labels_text

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,127}")  # whole names: fullmatch
MAX_LABELS = 16
MAX_LABEL_VALUE_LEN = 256
#: C0 control characters and DEL: never in a name, an id or a label value.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (lone surrogates count as 3), without encoding ASCII."""
    if text.isascii():  # one byte per character (and isascii is O(1))
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def name_violation(field_path: str, name: str) -> FieldViolation | None:
    """Metric names and label keys: 1-128 chars, ``[A-Za-z_][A-Za-z0-9_.:-]*``."""
    if not name:
        return FieldViolation(field_path, "must not be empty")
    if not NAME_RE.fullmatch(name):
        return FieldViolation(
            field_path,
            f"{quoted(name)} is not a valid name: 1-128 characters, starting with a letter or '_', "
            "then letters, digits, '_', '.', ':' or '-'",
        )
    return None


#: The characters of a map key a field path shows (longer keys are cut, marked "…").
MAX_KEY_SHOWN = 64


def quoted(text: str) -> str:
    """``text`` in double quotes with JSON escapes, cut to :data:`MAX_KEY_SHOWN`
    characters (marked "…" when cut): how field paths and messages show a name from the
    request, the same to a reader in any language."""
    shown = text if len(text) <= MAX_KEY_SHOWN else text[:MAX_KEY_SHOWN] + "…"
    return json.dumps(shown, ensure_ascii=False)


def keyed_path(field_path: str, key: str) -> str:
    """The field path of a map entry: ``labels["shard"]``."""
    return f"{field_path}[{quoted(key)}]"


def label_violations(field_path: str, labels: Mapping[str, str]) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if len(labels) > MAX_LABELS:
        out.append(FieldViolation(field_path, f"at most {MAX_LABELS} labels, got {len(labels)}"))
        return out
    chars = 0
    for key in sorted(labels):
        bad = name_violation(keyed_path(field_path, key), key)
        if bad is not None:
            out.append(bad)
        value = labels[key]
        chars += len(key) + len(value)
        if len(value) > MAX_LABEL_VALUE_LEN:
            out.append(
                FieldViolation(
                    keyed_path(field_path, key),
                    f"label value longer than {MAX_LABEL_VALUE_LEN} characters",
                )
            )
        elif CONTROL_RE.search(value):
            out.append(
                FieldViolation(
                    keyed_path(field_path, key), "label value must not contain control characters"
                )
            )
    # the stores keep a label set as JSON of at most MAX_LABELS_BYTES (UTF-8): without
    # control characters a character takes at most 4 bytes there (an escaped quote or
    # backslash 2), a label 6 more (quotes, colon, comma), so a short set always fits
    if not out and 4 * chars + 6 * len(labels) + 2 > MAX_LABELS_BYTES:
        size = len(labels_text(labels).encode("utf-8", "surrogatepass"))
        if size > MAX_LABELS_BYTES:
            out.append(
                FieldViolation(
                    field_path,
                    f"labels take {size} bytes as JSON (UTF-8), more than {MAX_LABELS_BYTES}",
                )
            )
    return out


def first_out_of_range(values: np.ndarray) -> int | None:
    """Index of the first NaN, infinity or |value| > MAX_ABS_VALUE, or None (vectorised)."""
    ok = np.abs(values) <= MAX_ABS_VALUE  # False for NaN too
    if ok.all():
        return None
    return int(np.argmin(ok))


def check_time_range(start_ns: int | None, end_ns: int | None) -> None:
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise InvalidArgument.single(
            "end_time", "must be after start_time (the time range is empty or inverted)"
        )


MAX_QUANTILES = 64
MAX_NAMES = 1000


def check_count(field_path: str, items: Sized, limit: int) -> None:
    """Bound a repeated field, so one request cannot ask for unbounded work."""
    if len(items) > limit:
        raise InvalidArgument.single(field_path, f"at most {limit} entries, got {len(items)}")


def check_quantiles(field_path: str, quantiles: Sequence[float]) -> None:
    check_count(field_path, quantiles, MAX_QUANTILES)
    violations = [
        FieldViolation(f"{field_path}[{i}]", f"{q!r} is not in [0, 1]")
        for i, q in enumerate(quantiles)
        if not (0.0 <= q <= 1.0)  # also rejects NaN
    ]
    if violations:
        raise InvalidArgument(
            message=f"{field_path}: quantiles must be in [0, 1]", field_violations=violations
        )


def check_names(field_path: str, names: Collection[str], limit: int = MAX_NAMES) -> None:
    check_count(field_path, names, limit)
    violations = [
        v for i, n in enumerate(names) if (v := name_violation(f"{field_path}[{i}]", n)) is not None
    ]
    if violations:
        raise InvalidArgument(message=f"{field_path}: invalid names", field_violations=violations)
