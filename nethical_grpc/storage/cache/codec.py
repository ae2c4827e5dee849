"""Tagged byte encoding of cache values: types survive the round trip, no pickle.

Every value is stored as bytes whose first byte says its type:

=============  ================================================================
``int``        plain decimal ASCII (``b"-42"``), so Redis ``INCRBY`` works on it
``str``        ``b"s"`` + UTF-8
``bytes``      ``b"b"`` + the bytes
``float``      ``b"f"`` + ``repr`` (``inf``, ``-inf`` and ``nan`` included)
``bool``       ``b"T"`` / ``b"F"``
``None``       ``b"N"``
list / dict    ``b"j"`` + compact JSON
=============  ================================================================

An integer is the only encoding that starts with a digit or ``-``, so the tags never
collide with it. Lists and dicts may nest str, int, float, bool, None, list and dict (with
``str`` keys); anything else (tuples, sets, bytes inside a container, non-``str`` keys,
subclasses such as enums) raises ``ValueError`` at write time rather than coming back as a
different type, and so do a container inside itself, containers nested more than
:data:`MAX_DEPTH` deep (which might not decode again) and an ``int`` with more digits than
Python writes as text (``sys.get_int_max_str_digits()``). Decoding never
executes code: it only parses.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = [
    "container_from_json",
    "container_to_json",
    "decode_value",
    "encode_value",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_DEPTH: Final = 100
"""The deepest nesting of lists and dicts a value may have (the value itself is depth 1):
decoding a deeper one would need more of the interpreter's recursion limit, which the
caller's own stack also uses."""

_JSON_SCALARS: Final = (str, int, float, bool, type(None))
_INT_START: Final = frozenset(b"-0123456789")
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode
_LOADS = json.JSONDecoder().decode


def _is_exact(value: list[Any] | dict[str, Any]) -> bool:
    """True when every nested item is JSON-exact (see the module doc) and no container is
    more than :data:`MAX_DEPTH` deep; False otherwise (:func:`_check_container` tells why).

    A walk level by level, each container once per level (a container held twice on one
    level is walked once), so a circular value ends when it grows too deep.
    """
    level: list[object] = [value]
    depth = 0
    while level:
        depth += 1
        below: list[object] = []
        extend = below.extend
        seen: set[int] = set()
        for item in level:
            kind = type(item)
            if kind is list or kind is dict:
                if depth > MAX_DEPTH:
                    return False
                ident = id(item)
                if ident in seen:
                    continue
                seen.add(ident)
                if kind is list:
                    assert isinstance(item, list)
                    extend(item)
                else:
                    assert isinstance(item, dict)
                    for k in item:
                        if type(k) is not str:
                            return False
                    extend(item.values())
            elif kind not in _JSON_SCALARS:
                return False
        level = below
    return True


def _check_container(value: list[Any] | dict[str, Any]) -> None:
    """Raise ``ValueError`` unless every nested item is JSON-exact (see the module doc).

    The common case, a valid value, is a walk without paths (:func:`_is_exact`); only a
    refused value is walked again (:func:`_problem`) to name the offending item.
    """
    if not _is_exact(value):
        raise ValueError(
            _problem(value) or f"cache value: lists and dicts are nested more than {MAX_DEPTH} deep"
        )


def _problem(value: list[Any] | dict[str, Any]) -> str | None:
    """What makes ``value`` not JSON-exact (an item of another type, a container inside
    itself), naming the item by its path; None if nothing.

    A depth-first walk that knows the containers on the current path (``inside``) and
    walks each container once (``done``), so shared containers cost nothing more.
    """
    inside: set[int] = set()
    done: set[int] = set()
    # (item, its path, True: the walk of that container's items ends here)
    stack: list[tuple[object, str, bool]] = [(value, "value", False)]
    while stack:
        item, path, leaving = stack.pop()
        kind = type(item)
        if leaving:
            inside.discard(id(item))
            done.add(id(item))
            continue
        if kind is list or kind is dict:
            ident = id(item)
            if ident in inside:
                return f"cache value: {path} is a circular reference to a container it is in"
            if ident in done:
                continue
            inside.add(ident)
            stack.append((item, path, True))
        if kind is list:
            assert isinstance(item, list)
            stack.extend((v, f"{path}[{i}]", False) for i, v in enumerate(item))
        elif kind is dict:
            assert isinstance(item, dict)
            for k, v in item.items():
                if type(k) is not str:
                    return (
                        f"cache value: dict keys must be str, {path} has key {k!r} "
                        f"of type {type(k).__name__}"
                    )
                stack.append((v, f"{path}[{k!r}]", False))
        elif kind not in _JSON_SCALARS:
            return (
                f"cache value: {path} is a {kind.__name__}; containers may hold only "
                "str, int, float, bool, None, list and dict"
            )
    return None


def _encode_str(value: str) -> bytes:
    try:
        return b"s" + value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"cache value: string is not valid Unicode ({err.reason})") from None


def container_to_json(value: list[Any] | dict[str, Any]) -> str:
    """The compact JSON text of a list or dict; ``ValueError`` unless it round-trips
    exactly (see the module doc)."""
    _check_container(value)
    try:
        text: str = _DUMPS(value)
        text.encode("utf-8")  # refuse lone surrogates here, not at the server
    except (RecursionError, UnicodeEncodeError, ValueError) as err:
        # ValueError: an int with more digits than Python writes as decimal text
        raise ValueError(f"cache value: cannot encode container ({err})") from None
    return text


def container_from_json(text: str) -> Any:
    """The list or dict that :func:`container_to_json` wrote as ``text``."""
    return _LOADS(text)


def _encode_container(value: Any) -> bytes:
    return b"j" + container_to_json(value).encode("utf-8")


def _encode_int(value: int) -> bytes:
    try:
        return str(value).encode("ascii")
    except ValueError:  # past sys.get_int_max_str_digits(); it could not be read back either
        raise ValueError(
            f"cache value: an int of {value.bit_length()} bits has more digits than "
            "Python converts to text"
        ) from None


_ENCODERS: Final[dict[type, Any]] = {
    int: _encode_int,
    str: _encode_str,
    bytes: lambda v: b"b" + v,
    float: lambda v: b"f" + repr(v).encode("ascii"),
    bool: lambda v: b"T" if v else b"F",
    type(None): lambda v: b"N",
    list: _encode_container,
    dict: _encode_container,
}


def encode_value(value: Any) -> bytes:
    """The tagged bytes for ``value``.

    ``ValueError`` for a type the cache cannot store exactly (see the module doc).
    """
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        raise ValueError(
            f"cache value: cannot store a {type(value).__name__}; use str, int, float, bool, "
            "None, bytes, list or dict"
        )
    data: bytes = encoder(value)
    return data


def decode_value(data: bytes) -> Any:
    """The value ``data`` encodes; ``ValueError`` when it was not written by this codec."""
    if not data:
        raise ValueError("cache entry is empty: not written by this cache")
    tag = data[0]
    try:
        if tag in _INT_START:
            return int(data)
        if tag == 0x73:  # s
            return data[1:].decode("utf-8")
        if tag == 0x62:  # b
            return data[1:]
        if tag == 0x66:  # f
            return float(data[1:])
        if tag == 0x6A:  # j
            return _LOADS(data[1:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cache entry is corrupt: {err}") from None
    except RecursionError:  # not written by this codec, which refuses such nesting
        raise ValueError("cache entry is nested too deeply: not written by this cache") from None
    if data == b"T":
        return True
    if data == b"F":
        return False
    if data == b"N":
        return None
    raise ValueError(f"cache entry {data[:16]!r} was not written by this cache")
