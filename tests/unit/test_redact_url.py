"""Store URLs are shown (logs, errors, GetNodeInfo) with every secret replaced."""

from __future__ import annotations

import pytest

from nethical_grpc.storage.backend import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://app:s3cret@db/metrics?schema=x", "postgresql://app:***@db/metrics?schema=x"),
        ("redis://127.0.0.1:1/0?password=Q5ecretPW", "redis://127.0.0.1:1/0?password=***"),
        (
            "postgresql://db/metrics?user=u&password=p%40ss&schema=s",
            "postgresql://db/metrics?user=u&password=***&schema=s",
        ),
        ("https://es:9200?api_key=abc123", "https://es:9200?api_key=***"),
        ("https://es:9200?API-KEY=abc", "https://es:9200?API-KEY=***"),
        (
            "postgresql://db/x?sslpassword=k&sslmode=require",
            "postgresql://db/x?sslpassword=***&sslmode=require",
        ),
        ("http://es:9200?auth_token=t", "http://es:9200?auth_token=***"),
        # nothing secret: unchanged, byte for byte
        ("sqlite:///var/lib/nethical/ts.db", "sqlite:///var/lib/nethical/ts.db"),
        ("redis://cache:6379/0?socket_timeout=1", "redis://cache:6379/0?socket_timeout=1"),
        ("memory://", "memory://"),
    ],
)
def test_secrets_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    for secret in ("s3cret", "Q5ecretPW", "p%40ss", "abc123", "abc", "=k&", "=t"):
        if secret in url and secret not in shown:
            assert secret not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://otel:S3cr3t@collector:notaport", "http://otel:***@collector:notaport"),
        ("postgresql://u:pw@host:99999/db", "postgresql://u:***@host:99999/db"),
    ],
)
def test_a_port_that_does_not_parse_raises_nothing_and_hides_the_password(
    url: str, expected: str
) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # an empty authority keeps its "//"; an absolute SQLite path stays absolute
        ("postgresql:///db?password=pw1&user=u", "postgresql:///db?password=***&user=u"),
        ("sqlite:////var/lib/a.db?password=pw2", "sqlite:////var/lib/a.db?password=***"),
        ("redis://h/0?password=pw3#f", "redis://h/0?password=***#f"),
    ],
)
def test_a_redacted_url_keeps_its_shape(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("host=db password=pw4 port=5432", "host=db password=*** port=5432"),
        ("host=db password = 'p w\\' 5' user=u", "host=db password = *** user=u"),
        ("dbname=metrics sslpassword=pw6", "dbname=metrics sslpassword=***"),
        ("dbname=metrics", "dbname=metrics"),
    ],
)
def test_a_libpq_connection_string_given_for_a_url_hides_its_secrets(text: str, shown: str) -> None:
    """Given where a URL goes, it is refused with its text in the error: never its
    password."""
    from nethical_grpc.storage.backend import url_scheme

    assert redact_url(text) == shown
    with pytest.raises(ValueError, match="scheme://") as refused:
        url_scheme(text)
    assert "pw" not in str(refused.value) and "p w" not in str(refused.value)
