"""The validity dates of a PEM certificate, read from its DER bytes, and what they mean now.

A server whose certificate has expired still starts and accepts TCP connections, and
every TLS client then fails its handshake with an error on the client's side only. So
the certificate's dates are read when the files are loaded (at start and on each reload)
and :func:`validity_problem` says, for the log, when a certificate has expired, is not
valid yet, or expires within :data:`EXPIRY_WARNING_DAYS`.

The standard library parses certificates only inside a handshake, so this module walks
the few DER elements in front of the validity (X.509, RFC 5280 §4.1): ``Certificate`` →
``tbsCertificate`` → optional ``[0] version``, ``serialNumber``, ``signature``,
``issuer``, then ``validity`` with ``notBefore`` and ``notAfter`` as ``UTCTime`` or
``GeneralizedTime``.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["EXPIRY_WARNING_DAYS", "certificate_validity", "validity_problem"]

#: A certificate that expires within this many days gets a warning at load.
EXPIRY_WARNING_DAYS: Final = 14

_PEM_RE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL
)
_SEQUENCE: Final = 0x30
_VERSION_TAG: Final = 0xA0  # [0] EXPLICIT
_UTC_TIME: Final = 0x17
_GENERALIZED_TIME: Final = 0x18


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        size = first & 0x7F
        if size == 0 or size > 4 or pos + size > len(der):
            raise ValueError("bad length")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    if pos + length > len(der):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _time(tag: int, text: bytes) -> datetime:
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; years 50-99 are 19xx (RFC 5280)
        stamp = datetime.strptime(text.decode("ascii"), "%y%m%d%H%M%SZ")
        if stamp.year >= 2050:
            stamp = stamp.replace(year=stamp.year - 100)
    elif tag == _GENERALIZED_TIME:  # YYYYMMDDHHMMSSZ
        stamp = datetime.strptime(text.decode("ascii"), "%Y%m%d%H%M%SZ")
    else:
        raise ValueError("not a time")
    return stamp.replace(tzinfo=UTC)


def certificate_validity(pem: bytes) -> tuple[datetime, datetime] | None:
    """``(not_before, not_after)`` of the first certificate in ``pem`` (aware, UTC), or
    ``None`` when there is no certificate or its encoding is not the usual DER."""
    found = _PEM_RE.search(pem)
    if found is None:
        return None
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
        tag, start, _ = _element(der, 0)  # Certificate
        if tag != _SEQUENCE:
            return None
        tag, pos, _ = _element(der, start)  # tbsCertificate
        if tag != _SEQUENCE:
            return None
        tag, _, end = _element(der, pos)
        if tag == _VERSION_TAG:
            pos = end
        for _ in range(3):  # serialNumber, signature, issuer
            _, _, pos = _element(der, pos)
        tag, pos, _ = _element(der, pos)  # validity
        if tag != _SEQUENCE:
            return None
        tag, start, end = _element(der, pos)
        not_before = _time(tag, der[start:end])
        tag, start, end = _element(der, end)
        not_after = _time(tag, der[start:end])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return not_before, not_after


def validity_problem(pem: bytes, now: datetime | None = None) -> str | None:
    """What is wrong with the dates of the first certificate in ``pem`` at ``now``
    (default: the current time): expired, not valid yet, or expiring within
    :data:`EXPIRY_WARNING_DAYS`; ``None`` when the dates are fine or cannot be read."""
    dates = certificate_validity(pem)
    if dates is None:
        return None
    not_before, not_after = dates
    now = datetime.now(UTC) if now is None else now
    if now > not_after:
        return f"expired on {not_after:%Y-%m-%d %H:%M:%S} UTC; TLS clients will refuse it"
    if now < not_before:
        return (
            f"not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC; TLS clients will "
            "refuse it until then (is this machine's clock right?)"
        )
    left = not_after - now
    if left <= timedelta(days=EXPIRY_WARNING_DAYS):
        hours = int(left.total_seconds() // 3600)
        when = f"{hours // 24} days" if hours >= 48 else f"{hours} hours"
        return f"expires on {not_after:%Y-%m-%d %H:%M:%S} UTC, in {when}"
    return None
