"""A throwaway certificate authority for local meshes and tests, made with ``openssl``.

Not for production: keys are written unencrypted (mode 0600) into the directory you
give. Production certificates come from your PKI (cert-manager, Vault, ...). Runs the
``openssl`` command (OpenSSL 1.1.1 or later); raises :class:`FileNotFoundError` when
it is not installed and :class:`RuntimeError` when a command fails.

Certificates use ECDSA P-256 keys and carry both ``serverAuth`` and ``clientAuth``
extended key usage, so one certificate can serve a node and authenticate it as a client
(the coordinator towards region nodes).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nethical_grpc.security.tls import TlsConfig

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(args: Sequence[str]) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("the openssl command is not installed")
    done = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate and its key on disk, with the serial number it was issued with."""

    cert_file: Path
    key_file: Path
    serial: int


@dataclass(frozen=True, slots=True)
class DevCA:
    """A self-signed CA on disk that issues leaf certificates."""

    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path, name: str = "nethical-dev-ca", days: int = 30) -> DevCA:
        """Write ``ca.crt``/``ca.key`` (``NAME.crt``/``.key``) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        _run(
            [
                "req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert),
                "-days", str(days), "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )  # fmt: skip
        os.chmod(key, 0o600)
        return cls(cert, key)

    def issue(
        self,
        directory: Path,
        name: str,
        hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
        serial: int | None = None,
        days: int = 30,
    ) -> IssuedCert:
        """Issue ``NAME.crt``/``NAME.key`` in ``directory`` for ``hosts`` (DNS names or IP
        addresses, as subjectAltName; by default every name of this machine's loopback,
        as a server on ``localhost`` listens on 127.0.0.1 and ::1). ``serial`` defaults to
        a random 63-bit number."""
        if not hosts:
            raise ValueError("a certificate needs at least one host name or address")
        directory.mkdir(parents=True, exist_ok=True)
        serial = secrets.randbits(62) | (1 << 62) if serial is None else serial
        if serial <= 0:
            raise ValueError("a serial number must be positive")
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        sans = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
        with tempfile.TemporaryDirectory() as tmp:
            csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
            ext.write_text(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName={sans}\n"
            )
            _run(["req", "-new", *_EC, "-keyout", str(key), "-out", str(csr),
                  "-subj", f"/CN={name}"])  # fmt: skip
            _run(
                [
                    "x509", "-req", "-in", str(csr), "-CA", str(self.cert_file),
                    "-CAkey", str(self.key_file), "-set_serial", str(serial),
                    "-days", str(days), "-sha256", "-extfile", str(ext), "-out", str(cert),
                ]
            )  # fmt: skip
        os.chmod(key, 0o600)
        return IssuedCert(cert, key, serial)

    def server_tls(self, leaf: IssuedCert, require_client_cert: bool = False) -> TlsConfig:
        """A server :class:`TlsConfig` for ``leaf``, trusting this CA for client certs."""
        return TlsConfig(leaf.cert_file, leaf.key_file, self.cert_file, require_client_cert)

    def client_tls(
        self, leaf: IssuedCert | None = None, server_name: str | None = None
    ) -> TlsConfig:
        """A client :class:`TlsConfig` trusting this CA, presenting ``leaf`` if given."""
        return TlsConfig(
            leaf.cert_file if leaf else None,
            leaf.key_file if leaf else None,
            self.cert_file,
            server_name=server_name,
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
