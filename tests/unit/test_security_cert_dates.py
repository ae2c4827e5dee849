"""Certificate validity dates: read from the DER, compared with ``openssl``'s reading, and
the warnings a server or client logs when it loads a certificate that has expired, is not
valid yet or expires soon."""

from __future__ import annotations

import base64
import logging
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from meshutil import require_openssl

from nethical_grpc.security.cert_dates import (
    EXPIRY_WARNING_DAYS,
    certificate_validity,
    validity_problem,
)
from nethical_grpc.security.devcerts import DevCA, IssuedCert
from nethical_grpc.security.tls import (
    TlsConfig,
    channel_credentials,
    load_certificates,
    server_credentials,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    require_openssl()
    return DevCA.create(tmp_path_factory.mktemp("ca"), days=400)


def _leaf(ca: DevCA, directory: Path, days: int) -> IssuedCert:
    return ca.issue(directory, f"leaf-{days}", days=days)


def _openssl_date(cert: Path, which: str) -> datetime:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", f"-{which}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # e.g. "notAfter=Nov 30 10:11:12 2026 GMT"
    text = out.split("=", 1)[1]
    return datetime.strptime(text, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)


@pytest.mark.parametrize("days", [1, 30, 10_000])  # 10,000 days: GeneralizedTime (>= 2050)
def test_dates_equal_what_openssl_reads(ca: DevCA, tmp_path: Path, days: int) -> None:
    leaf = _leaf(ca, tmp_path, days)
    dates = certificate_validity(leaf.cert_file.read_bytes())
    assert dates is not None
    not_before, not_after = dates
    assert not_before == _openssl_date(leaf.cert_file, "startdate")
    assert not_after == _openssl_date(leaf.cert_file, "enddate")
    assert not_after - not_before == timedelta(days=days)


def test_problems_by_time(ca: DevCA, tmp_path: Path) -> None:
    pem = _leaf(ca, tmp_path, 2).cert_file.read_bytes()
    dates = certificate_validity(pem)
    assert dates is not None
    not_before, not_after = dates
    soon = validity_problem(pem, not_before + timedelta(hours=1))
    assert soon is not None and soon.startswith("expires on ") and "in 47 hours" in soon
    later = validity_problem(pem, not_after - timedelta(days=1, hours=12))
    assert later is not None and "in 36 hours" in later
    expired = validity_problem(pem, not_after + timedelta(seconds=1))
    assert expired is not None and expired.startswith("expired on ")
    assert f"{not_after:%Y-%m-%d %H:%M:%S}" in expired
    early = validity_problem(pem, not_before - timedelta(minutes=5))
    assert early is not None and early.startswith("not valid before ")
    # a certificate with more time left than the warning window is fine
    long_lived = _leaf(ca, tmp_path, EXPIRY_WARNING_DAYS + 2).cert_file.read_bytes()
    assert validity_problem(long_lived) is None
    assert validity_problem(long_lived, datetime.now(UTC) + timedelta(days=3)) is not None


def test_what_is_not_a_readable_certificate_gives_none(ca: DevCA) -> None:
    pem = ca.cert_file.read_bytes()
    body = pem.split(b"-----")[2]
    der = base64.b64decode(b"".join(body.split()))
    for bad in (
        b"",
        b"not pem at all",
        ca.key_file.read_bytes(),  # a key, no certificate
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(der[:40])  # cut off before the validity
        + b"-----END CERTIFICATE-----\n",
    ):
        assert certificate_validity(bad) is None
        assert validity_problem(bad) is None
    assert certificate_validity(pem) is not None


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_loading_warns_about_a_certificate_that_expires_soon(
    ca: DevCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    soon = _leaf(ca, tmp_path / "soon", 1)
    fine = _leaf(ca, tmp_path / "fine", 90)
    with caplog.at_level(logging.WARNING, logger="nethical_grpc.security.tls"):
        load_certificates(TlsConfig(fine.cert_file, fine.key_file, ca.cert_file))
        assert _warnings(caplog) == []
        server_credentials(TlsConfig(soon.cert_file, soon.key_file, ca.cert_file))
        channel_credentials(TlsConfig(soon.cert_file, soon.key_file, ca.cert_file))
    warned = _warnings(caplog)
    assert len(warned) == 2
    for line in warned:
        assert line.startswith(f"TLS certificate {soon.cert_file} expires on ")


def test_a_ca_that_expires_soon_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_openssl()
    short_ca = DevCA.create(tmp_path / "short", days=3)
    with caplog.at_level(logging.WARNING, logger="nethical_grpc.security.tls"):
        creds = channel_credentials(TlsConfig(None, None, short_ca.cert_file))
    assert isinstance(creds, grpc.ChannelCredentials)
    warned = _warnings(caplog)
    assert len(warned) == 1 and warned[0].startswith(f"TLS CA {short_ca.cert_file} expires on ")
