"""A status stays within what a gRPC client accepts, however much bad input it echoes."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.errors import (
    MAX_MESSAGE_BYTES,
    MAX_VIOLATION_BYTES,
    OMITTED_VIOLATIONS_KEY,
    FieldViolation,
    InvalidArgument,
    clip,
    to_status,
)

#: a client's default limit on received metadata (trailers included)
CLIENT_METADATA_SOFT_LIMIT = 8 * 1024


def decoded(status: grpc.Status) -> status_pb2.Status:
    [(_key, value)] = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(value)


def trailer_bytes(status: grpc.Status) -> int:
    """What the status costs in the trailers: the details base64-encoded, the message
    percent-encoded (non-ASCII bytes take three characters)."""
    details = sum(len(v) for k, v in status.trailing_metadata if k == "grpc-status-details-bin")
    message = status.details.encode()
    return (details * 4 + 2) // 3 + len(message) + 2 * sum(b >= 0x80 for b in message)


@given(st.text(), st.integers(3, 600))
def test_clip_fits_and_keeps_a_prefix(text: str, max_bytes: int) -> None:
    out = clip(text, max_bytes)
    assert len(out.encode("utf-8", "surrogatepass")) <= max_bytes
    if len(text.encode("utf-8", "surrogatepass")) <= max_bytes:
        assert out == text
    else:
        assert out.endswith("…") and text.startswith(out[:-1])


def test_many_long_violations_are_bounded_and_counted() -> None:
    violations = [FieldViolation(f"metrics[{i}]" + "x" * 5000, "é" * 5000) for i in range(1000)]
    error = InvalidArgument(message="ü" * 100_000, field_violations=violations)
    status = to_status(error)
    assert trailer_bytes(status) < CLIENT_METADATA_SOFT_LIMIT
    assert len(status.details.encode()) <= MAX_MESSAGE_BYTES
    details = decoded(status)
    bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    assert details.details[0].Unpack(bad) and details.details[1].Unpack(info)
    listed = list(bad.field_violations)
    assert listed and listed[0].field.startswith("metrics[0]x")
    assert sum(len(v.field.encode()) + len(v.description.encode()) for v in listed) <= (
        MAX_VIOLATION_BYTES
    )
    assert int(info.metadata[OMITTED_VIOLATIONS_KEY]) == 1000 - len(listed)


def test_a_short_status_is_unchanged() -> None:
    error = InvalidArgument(
        message="two bad fields",
        field_violations=[FieldViolation("a", "bad"), FieldViolation("b[1]", "worse")],
        metadata={"k": "v"},
    )
    details = decoded(to_status(error))
    bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    assert details.details[0].Unpack(bad) and details.details[1].Unpack(info)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("a", "bad"),
        ("b[1]", "worse"),
    ]
    assert dict(info.metadata) == {"k": "v"}
    assert details.message == "two bad fields"
