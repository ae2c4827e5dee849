"""TLS settings, file checks and the certificate reloader (no server needed)."""

from __future__ import annotations

import logging
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from meshutil import require_openssl

from nethical_grpc.security.devcerts import DevCA, IssuedCert
from nethical_grpc.security.tls import (
    CertificateReloader,
    TlsConfig,
    channel_credentials,
    describe_transport,
    load_certificates,
    log_transport_security,
    server_credentials,
    tls_channel_options,
    tls_config_from_env,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCA, Path]:
    require_openssl()
    root = tmp_path_factory.mktemp("pki")
    return DevCA.create(root / "ca"), root


def _copy(leaf: IssuedCert, directory: Path) -> TlsConfig:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    shutil.copy(leaf.cert_file, cert)
    shutil.copy(leaf.key_file, key)
    return TlsConfig(cert, key)


def _rotate(src: IssuedCert, cert: Path, key: Path) -> None:
    for s, d in ((src.cert_file, cert), (src.key_file, key)):
        tmp = d.with_suffix(".new")
        shutil.copy(s, tmp)
        os.replace(tmp, d)


def test_config_combinations() -> None:
    with pytest.raises(ValueError, match="both a certificate and its key"):
        TlsConfig(cert_file=Path("a.crt"))
    with pytest.raises(ValueError, match="needs a CA"):
        TlsConfig(Path("a.crt"), Path("a.key"), require_client_cert=True)
    client = TlsConfig(ca_file=Path("ca.crt"), server_name="node.mesh")
    assert not client.has_identity
    assert tls_channel_options(client) == [("grpc.ssl_target_name_override", "node.mesh")]
    assert tls_channel_options(TlsConfig()) == []


def test_config_from_env() -> None:
    assert tls_config_from_env({}) is None
    tls = tls_config_from_env(
        {
            "NETHICAL_TLS_CERT": "/c.crt",
            "NETHICAL_TLS_KEY": "/c.key",
            "NETHICAL_TLS_CA": "/ca.crt",
            "NETHICAL_TLS_REQUIRE_CLIENT_CERT": "yes",
        }
    )
    assert tls == TlsConfig(Path("/c.crt"), Path("/c.key"), Path("/ca.crt"), True)
    with pytest.raises(ValueError, match="expected true/false"):
        tls_config_from_env({"NETHICAL_TLS_CA": "/ca", "NETHICAL_TLS_REQUIRE_CLIENT_CERT": "maybe"})
    with pytest.raises(ValueError, match="no TLS files"):
        tls_config_from_env({"NETHICAL_TLS_REQUIRE_CLIENT_CERT": "1"})


def test_plaintext_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nethical_grpc.security.tls")
    text = log_transport_security("region node on 127.0.0.1:1", None, auth=True)
    assert "PLAINTEXT" in text
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "unencrypted" in record.getMessage()
    assert "clear text" in record.getMessage()
    assert describe_transport(None, False, "client") == "PLAINTEXT (no TLS), no bearer tokens"


def test_tls_is_logged_with_mode_and_paths(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nethical_grpc.security.tls")
    tls = TlsConfig(Path("/s.crt"), Path("/s.key"), Path("/ca.crt"), True)
    text = log_transport_security("coordinator", tls, auth=True)
    assert text.startswith("coordinator: mutual TLS (cert=/s.crt, ca=/ca.crt")
    assert "bearer tokens required" in text
    assert caplog.records[0].levelno == logging.INFO
    client = TlsConfig(ca_file=Path("/ca.crt"))
    assert describe_transport(client, True, "client").startswith("TLS (ca=/ca.crt)")


def test_load_checks_pem_and_key_match(pki: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, _ = pki
    a = ca.issue(tmp_path, "a")
    b = ca.issue(tmp_path, "b")
    loaded = load_certificates(TlsConfig(a.cert_file, a.key_file, ca.cert_file))
    assert loaded.cert == a.cert_file.read_bytes()
    assert loaded.ca == ca.cert_file.read_bytes()
    with pytest.raises(ValueError, match="does not match") as info:
        load_certificates(TlsConfig(a.cert_file, b.key_file))
    assert b.key_file.read_text() not in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        load_certificates(TlsConfig(tmp_path / "none.crt", a.key_file))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="not PEM"):
        load_certificates(TlsConfig(junk, a.key_file))
    with pytest.raises(ValueError, match="not PEM"):
        channel_credentials(TlsConfig(ca_file=junk))
    with pytest.raises(ValueError, match="does not match"):
        server_credentials(TlsConfig(a.cert_file, b.key_file))
    assert isinstance(
        server_credentials(TlsConfig(a.cert_file, a.key_file)), grpc.ServerCredentials
    )
    assert isinstance(channel_credentials(ca.client_tls(a)), grpc.ChannelCredentials)


def test_reloader_returns_a_config_only_when_files_change(
    pki: tuple[DevCA, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, _ = pki
    first, second, third = (ca.issue(tmp_path / n, n) for n in ("one", "two", "three"))
    tls = _copy(first, tmp_path / "live")
    assert tls.cert_file is not None
    assert tls.key_file is not None
    reloader = CertificateReloader(tls)
    assert reloader() is None  # nothing changed
    assert reloader() is None

    _rotate(second, tls.cert_file, tls.key_file)
    assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
    assert reloader.reloads == 1
    assert reloader() is None  # applied once

    # half a rotation: the new certificate with the old key is not applied ...
    tmp = tls.cert_file.with_suffix(".new")
    shutil.copy(third.cert_file, tmp)
    os.replace(tmp, tls.cert_file)
    with caplog.at_level(logging.WARNING, logger="nethical_grpc.security.tls"):
        assert reloader() is None
    assert "not reloaded" in caplog.text
    assert "does not match" in caplog.text
    assert reloader.reloads == 1
    # ... until the key arrives
    tmp = tls.key_file.with_suffix(".new")
    shutil.copy(third.key_file, tmp)
    os.replace(tmp, tls.key_file)
    assert reloader() is not None
    assert reloader.reloads == 2

    tls.key_file.unlink()
    assert reloader() is None  # a missing file keeps the current certificate
    assert third.key_file.read_text() not in caplog.text


def _encrypted_key(leaf: IssuedCert, directory: Path) -> TlsConfig:
    """``leaf``'s certificate with its key encrypted under a pass phrase."""
    key = directory / "encrypted.key"
    args = ["pkey", "-in", str(leaf.key_file), "-aes256", "-passout", "pass:secret"]
    subprocess.run(["openssl", *args, "-out", str(key)], check=True, capture_output=True)
    return TlsConfig(leaf.cert_file, key)


def _in_a_terminal(code: str) -> tuple[int, str]:
    """Exit status and output of ``python -c code`` run with a pseudo-terminal as its
    controlling terminal. A child that asks that terminal for a pass phrase would wait
    for an answer for ever: it is killed (status -9) once the question shows."""
    prompt = b"Enter PEM pass phrase"
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execv(sys.executable, [sys.executable, "-c", code])
    out = b""
    try:
        while prompt not in out:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has exited and the terminal closed
                break
            if not chunk:
                break
            out += chunk
        if prompt in out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_an_encrypted_key_is_refused_without_asking_a_terminal(
    pki: tuple[DevCA, Path], tmp_path: Path
) -> None:
    ca, _ = pki
    tls = _encrypted_key(ca.issue(tmp_path, "a"), tmp_path)
    # a server started from a terminal (or a reload on gRPC's handshake thread) would
    # hang on OpenSSL's "Enter PEM pass phrase:" prompt
    code = (
        "from pathlib import Path\n"
        "from nethical_grpc.security.tls import TlsConfig, load_certificates\n"
        "try:\n"
        f"    load_certificates(TlsConfig(Path({str(tls.cert_file)!r}), "
        f"Path({str(tls.key_file)!r})))\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    status, out = _in_a_terminal(code)
    assert "Enter PEM pass phrase" not in out
    assert status == 0, out
    assert f"TLS key {tls.key_file} is encrypted" in out
    with pytest.raises(ValueError, match="is encrypted"):
        server_credentials(tls)
    with pytest.raises(ValueError, match="is encrypted"):
        channel_credentials(tls)


def test_swapped_or_unparsable_files_are_named_for_what_they_are(
    pki: tuple[DevCA, Path], tmp_path: Path
) -> None:
    ca, _ = pki
    a = ca.issue(tmp_path, "a")
    with pytest.raises(
        ValueError, match=re.escape(f"TLS certificate {a.key_file} holds no certificate")
    ):
        load_certificates(TlsConfig(a.key_file, a.cert_file))
    with pytest.raises(ValueError, match=re.escape(f"TLS key {a.cert_file} holds no private key")):
        load_certificates(TlsConfig(a.cert_file, a.cert_file))
    garbled = tmp_path / "garbled.crt"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError) as info:
        load_certificates(TlsConfig(garbled, a.key_file))
    assert "does not match" not in str(info.value)
    assert f"cannot load TLS certificate {garbled} with key {a.key_file}" in str(info.value)


def test_reloader_tries_failing_files_again_only_once_they_change(
    pki: tuple[DevCA, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken rotation is read and warned about once, not on every handshake."""
    ca, _ = pki
    first, second = (ca.issue(tmp_path / n, n) for n in ("one", "two"))
    tls = _copy(first, tmp_path / "live")
    assert tls.cert_file is not None
    assert tls.key_file is not None
    reloader = CertificateReloader(tls)

    def warnings() -> int:
        return sum("not reloaded" in r.getMessage() for r in caplog.records)

    shutil.copy(second.cert_file, tls.cert_file)  # the new certificate, the old key
    with caplog.at_level(logging.WARNING, logger="nethical_grpc.security.tls"):
        for _ in range(5):
            assert reloader() is None
        assert warnings() == 1
        tls.key_file.unlink()  # a change: tried (and warned about) once more
        for _ in range(5):
            assert reloader() is None
        assert warnings() == 2
        shutil.copy(second.key_file, tls.key_file)  # the rotation completes
        assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
        assert reloader.reloads == 1
        assert reloader() is None
        # a failure after a success is warned about again
        shutil.copy(first.key_file, tls.key_file)
        assert reloader() is None
        assert reloader() is None
        assert warnings() == 3
