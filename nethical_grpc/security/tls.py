"""TLS for servers and channels: certificate, key and CA paths, reloaded without restart.

A server's credentials are :func:`grpc.dynamic_ssl_server_credentials` over a
:class:`CertificateReloader` per port, all of a server's ports sharing one
:class:`ServerTls`: on each new connection's handshake gRPC asks the port's reloader for
the certificate configuration, and the shared loader re-reads the certificate, key and
CA files (once for all ports) when any of them changed (device, inode, size, mtime or
ctime: a ``chmod`` or ``chown`` that makes a rotated key readable to the server changes
the ctime only). New connections on every port then get the new certificate;
established connections keep theirs. A half-written rotation (a key that does not
match the certificate, an unreadable file) is not applied: the previous certificate
stays in use, a warning is logged once (not once per port), and the files are tried
again when they change next (not on every handshake while they stay as they are).

With ``require_client_cert`` the server demands a client certificate signed by the CA
(mutual TLS, coordinator ↔ region nodes); a client without one fails the handshake and
its call ends UNAVAILABLE.

Channels read their files when created (:func:`channel_credentials`); a channel made
after a rotation uses the new client certificate.

Whenever the files are loaded, a certificate or CA that has expired, is not valid yet
or expires soon is logged as a warning naming the file (:mod:`.cert_dates`): an expired
server certificate otherwise shows only in each client's failed handshake.

Plaintext stays available for local use; :func:`log_transport_security` says which one a
server or client runs, loudly for plaintext.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from nethical_grpc.security.cert_dates import validity_problem
from nethical_grpc.security.flags import (
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_REQUIRE_CLIENT_CERT,
    ENV_TLS_SERVER_NAME,
    parse_bool,
)

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Where the PEM files are, and whether a server demands client certificates.

    Server: ``cert_file`` + ``key_file`` are required; ``ca_file`` is the CA that
    client certificates must chain to (required with ``require_client_cert``).
    Client: ``ca_file`` is the CA the server's certificate must chain to (None: the
    system roots); ``cert_file`` + ``key_file`` are the client certificate for mutual
    TLS (both or neither); ``server_name`` overrides the name checked against the
    server's certificate (when the dialled address is not in its SANs).

    Raises ValueError when only one of cert/key is given, or ``require_client_cert``
    comes without ``ca_file``.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("requiring client certificates needs a CA (--tls-ca)")

    @property
    def has_identity(self) -> bool:
        """True when a certificate and key are configured."""
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        """Client side: presents a certificate; server side: demands one."""
        return self.require_client_cert

    def describe(self) -> str:
        """Paths and mode, for logs (file names only, never contents)."""
        parts = []
        if self.cert_file is not None:
            parts.append(f"cert={self.cert_file}")
        if self.ca_file is not None:
            parts.append(f"ca={self.ca_file}")
        if self.require_client_cert:
            parts.append("client certificates required")
        if self.server_name:
            parts.append(f"server name={self.server_name}")
        return ", ".join(parts) or "system roots"


def tls_config_from_env(env: Mapping[str, str] | None = None) -> TlsConfig | None:
    """``NETHICAL_TLS_CERT``/``_KEY``/``_CA``/``_REQUIRE_CLIENT_CERT``/``_SERVER_NAME``;
    None when none of the paths is set. Raises ValueError for a bad combination or a
    boolean that is not 1/0/true/false/yes/no/on/off."""
    env = os.environ if env is None else env
    cert, key, ca = (env.get(n) or None for n in (ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_CA))
    require = parse_bool(env.get(ENV_TLS_REQUIRE_CLIENT_CERT, ""), ENV_TLS_REQUIRE_CLIENT_CERT)
    if cert is None and key is None and ca is None:
        if require:
            raise ValueError(f"{ENV_TLS_REQUIRE_CLIENT_CERT} is set but no TLS files are")
        return None
    return TlsConfig(
        cert_file=Path(cert) if cert else None,
        key_file=Path(key) if key else None,
        ca_file=Path(ca) if ca else None,
        require_client_cert=require,
        server_name=env.get(ENV_TLS_SERVER_NAME) or None,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the TLS {what} {path} is not PEM")
    return data


def _check_kinds(cert: bytes, cert_file: Path, key: bytes, key_file: Path) -> None:
    """Raise ValueError when the certificate file holds no certificate (the two files
    swapped, say), the key file no private key, or the key is encrypted (gRPC takes no
    pass phrase)."""
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ValueError(f"the TLS certificate {cert_file} holds no certificate")
    if b"PRIVATE KEY-----" not in key:
        raise ValueError(f"the TLS key {key_file} holds no private key")
    if b"ENCRYPTED PRIVATE KEY-----" in key or b"Proc-Type: 4,ENCRYPTED" in key:
        raise ValueError(
            f"the TLS key {key_file} is encrypted: gRPC needs it without a pass phrase "
            "(openssl pkey -in ENCRYPTED.key -out PLAIN.key)"
        )


def _check_pair(cert_file: Path, key_file: Path) -> None:
    """Raise ValueError unless the key belongs to the certificate (OpenSSL checks it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # a password, so that OpenSSL never prompts the terminal for one (a start, or a
        # reload on gRPC's handshake thread, would wait for an answer)
        ctx.load_cert_chain(cert_file, key_file, password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(
                f"TLS key {key_file} does not match certificate {cert_file} ({exc.reason})"
            ) from None
        raise ValueError(
            f"cannot load TLS certificate {cert_file} with key {key_file}: OpenSSL cannot "
            f"parse them ({exc.reason or exc.strerror})"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot load TLS certificate {cert_file}: {exc.strerror}") from None


def _check_ca(ca_file: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS CA {ca_file} holds no usable certificate ({exc})") from None


def _stamp(paths: list[Path]) -> Stamp:
    """Device, inode, size, mtime and ctime of each file (a ``chmod``/``chown`` that
    makes a file readable again changes its ctime only)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _seen(paths: list[Path]) -> Stamp:
    """:func:`_stamp`, with a file that cannot be looked at stamped by its error number
    (so that "still missing" compares equal to "missing")."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as exc:
            out.append((-1, exc.errno or 0, 0, 0, 0))
        else:
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class LoadedCertificates:
    """PEM bytes as read, checked: the key matches the certificate, the CA parses."""

    cert: bytes
    key: bytes
    ca: bytes | None


def load_certificates(tls: TlsConfig) -> LoadedCertificates:
    """Read and check ``tls``'s files. Raises ValueError naming the bad file; logs a
    warning for a certificate (or CA) that has expired, is not valid yet or expires
    soon (:func:`~nethical_grpc.security.cert_dates.validity_problem`)."""
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("TLS needs a certificate and key (--tls-cert, --tls-key)")
    cert = _read(tls.cert_file, "certificate")
    key = _read(tls.key_file, "key")
    _check_kinds(cert, tls.cert_file, key, tls.key_file)
    _check_pair(tls.cert_file, tls.key_file)
    warn_certificate_dates(cert, tls.cert_file, "certificate")
    ca = None
    if tls.ca_file is not None:
        ca = _read_ca(tls.ca_file)
    return LoadedCertificates(cert, key, ca)


def _read_ca(ca_file: Path) -> bytes:
    ca = _read(ca_file, "CA")
    _check_ca(ca_file)
    warn_certificate_dates(ca, ca_file, "CA")
    return ca


def warn_certificate_dates(pem: bytes, path: Path, what: str) -> str | None:
    """Log (WARNING) and return what is wrong with the dates of the first certificate
    in ``pem``, read from ``path``; ``None`` when nothing is."""
    problem = validity_problem(pem)
    if problem is not None:
        log.warning("TLS %s %s %s", what, path, problem)
    return problem


class ServerTls:
    """One server's TLS files, loaded and checked once per change, shared by its ports.

    :meth:`refresh` looks at the files (three ``stat`` calls) and re-reads them when
    any changed; each successful load is a new generation of the configuration. Files
    that failed to load are not read again (nor the failure logged again) until they
    change, and the current configuration stays. A server bound to several addresses
    makes one of these and one :meth:`credentials` per port: gRPC asks each port's
    fetcher separately, and a port answered None keeps its certificate, so each port's
    :class:`CertificateReloader` hands out every generation it has not had yet.

    Raises ValueError when the files cannot be read, are not PEM, or the key does not
    match the certificate.
    """

    def __init__(self, tls: TlsConfig) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ValueError("a TLS server needs --tls-cert and --tls-key")
        self.tls = tls
        self._paths = [p for p in (tls.cert_file, tls.key_file, tls.ca_file) if p is not None]
        self._lock = threading.Lock()
        self.reloads = 0  # the generation: successful reloads since the start
        self._stamp, self._config = self._load()  # ValueError: refuse to start
        # the files as they were when a reload last failed: not tried again as they are
        self._failed: Stamp | None = None

    def _load(self) -> tuple[Stamp, grpc.ServerCertificateConfiguration]:
        try:
            before = _stamp(self._paths)
        except OSError as exc:
            raise ValueError(f"cannot read TLS files: {exc.strerror} ({exc.filename})") from None
        loaded = load_certificates(self.tls)
        config = grpc.ssl_server_certificate_configuration(
            [(loaded.key, loaded.cert)], root_certificates=loaded.ca
        )
        try:
            after = _stamp(self._paths)
        except OSError as exc:
            raise ValueError(f"TLS files changed while read: {exc.strerror}") from None
        if after != before:
            raise ValueError("TLS files changed while being read")
        return after, config

    def current(self) -> tuple[int, grpc.ServerCertificateConfiguration]:
        """The generation and configuration loaded last (files not looked at)."""
        with self._lock:
            return self.reloads, self._config

    def refresh(self) -> tuple[int, grpc.ServerCertificateConfiguration]:
        """Reload the files if they changed; the current generation and configuration.
        Never raises: a failed reload is logged (once per change) and the current
        configuration kept."""
        reloaded = False
        with self._lock:
            seen: Stamp | None = None
            try:
                seen = _seen(self._paths)
                if seen not in (self._stamp, self._failed):
                    self._stamp, self._config = self._load()
                    self._failed = None
                    self.reloads += 1
                    reloaded = True
            except (OSError, ValueError) as exc:
                self._failed = seen
                log.warning("TLS certificates not reloaded, keeping the current ones: %s", exc)
            except Exception:  # never let an error escape into gRPC's handshake thread
                self._failed = seen
                log.exception("TLS certificate reload failed; keeping the current ones")
            current = self.reloads, self._config
        if reloaded:
            log.info("TLS certificates reloaded (%s)", self.tls.describe())
        return current

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for one port, reloading from this shared loader."""
        reloader = CertificateReloader(self)
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], reloader)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial, fetcher, require_client_authentication=self.tls.require_client_cert
        )


class CertificateReloader:
    """gRPC's certificate-configuration fetcher for one port of a server.

    Calling it refreshes the shared :class:`ServerTls` (given, or made from a
    :class:`TlsConfig` for a single port) and returns its configuration when that is of
    a newer generation than the one this port was last handed, else None (keep the
    current one). gRPC calls it from its own threads on every new handshake.
    """

    def __init__(self, source: TlsConfig | ServerTls) -> None:
        self.loader = source if isinstance(source, ServerTls) else ServerTls(source)
        self.tls = self.loader.tls
        self._lock = threading.Lock()
        self._generation, self.initial = self.loader.current()

    @property
    def reloads(self) -> int:
        """Successful reloads of the shared loader's files."""
        return self.loader.reloads

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            generation, config = self.loader.refresh()
            with self._lock:
                if generation <= self._generation:
                    return None
                self._generation = generation
            return config
        except Exception:  # never let an error escape into gRPC's handshake thread
            log.exception("TLS certificate reload failed; keeping the current ones")
            return None


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Reloading server credentials for a single port (see :class:`ServerTls`; a server
    bound to several addresses shares one :class:`ServerTls` among its ports).

    Raises ValueError when the files cannot be read, are not PEM, or the key does not
    match the certificate.
    """
    return ServerTls(tls).credentials()


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Channel credentials for ``tls``: the CA to trust (None: system roots) and, when
    configured, the client certificate for mutual TLS. Files are read now.

    Raises ValueError for an unreadable or non-PEM file, or a key that does not match
    its certificate.
    """
    ca = _read_ca(tls.ca_file) if tls.ca_file is not None else None
    if tls.cert_file is None or tls.key_file is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    loaded = load_certificates(TlsConfig(tls.cert_file, tls.key_file))
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=loaded.key, certificate_chain=loaded.cert
    )


def tls_channel_options(tls: TlsConfig) -> list[tuple[str, str]]:
    """Channel options ``tls`` needs: the server-name override, if any."""
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []


def describe_transport(tls: TlsConfig | None, auth: bool, side: str = "server") -> str:
    """One line saying how a server or client talks: TLS (mode, files) or plaintext,
    and whether bearer tokens are checked (server) or sent (client)."""
    token = (
        ("bearer tokens required" if side == "server" else "bearer token sent")
        if auth
        else ("no bearer tokens")
    )
    if tls is None:
        return f"PLAINTEXT (no TLS), {token}"
    if side == "server":
        mode = "mutual TLS" if tls.require_client_cert else "TLS"
    else:
        mode = "mutual TLS" if tls.has_identity else "TLS"
    return f"{mode} ({tls.describe()}), {token}"


def log_transport_security(
    what: str,
    tls: TlsConfig | None,
    auth: bool,
    side: str = "server",
    logger: logging.Logger | None = None,
) -> str:
    """Log how ``what`` (e.g. ``"region node on 0.0.0.0:50051"``) talks, and return it.

    TLS: one INFO line with the mode and file names. Plaintext: a WARNING that traffic
    (and any bearer token) is readable on the network, for local use only.
    """
    logger = logger or log
    text = f"{what}: {describe_transport(tls, auth, side)}"
    if tls is None:
        warning = "traffic is unencrypted; use only on a trusted local network"
        if auth:
            warning += " (bearer tokens travel in clear text)"
        logger.warning("%s — %s", text, warning)
    else:
        logger.info("%s", text)
    return text
