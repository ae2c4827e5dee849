"""gRPC channel targets taken apart (its name syntax): for checking a port the command
line was given, and for naming a call's server on its spans."""

from __future__ import annotations

from typing import Final

__all__ = ["PATH_SCHEMES", "addresses_of", "host_and_port"]

#: Schemes whose addresses are HOST:PORT (``ipv4:``, ``ipv6:``: a list of them).
HOST_PORT_SCHEMES: Final = ("dns", "ipv4", "ipv6")
#: Schemes that name no TCP port (a socket path, a vsock address).
PATH_SCHEMES: Final = ("unix", "unix-abstract", "vsock")


def addresses_of(target: str) -> tuple[str, list[str]]:
    """``(scheme, addresses)`` of ``target``: for ``dns:`` (its authority, in
    ``dns://AUTHORITY/NAME:PORT``, left out), ``ipv4:`` and ``ipv6:``, its HOST:PORT
    addresses; for a path scheme (:data:`PATH_SCHEMES`), the rest as one address; else
    ``("", [target])``. The scheme comes in lower case: gRPC reads ``DNS:``, ``IPv4:``
    or ``Unix:`` as ``dns:``, ``ipv4:`` and ``unix:``."""
    scheme, colon, rest = target.partition(":")
    scheme = scheme.lower() if scheme.isascii() else scheme  # ASCII only, as gRPC
    if colon and scheme in PATH_SCHEMES:
        return scheme, [rest]
    if colon and scheme in HOST_PORT_SCHEMES:
        if rest.startswith("//"):
            rest = rest[2:].partition("/")[2]
        return scheme, rest.split(",")
    return "", [target]


def host_and_port(address: str) -> tuple[str, str | None]:
    """The host (brackets left out) and the port ``HOST:PORT`` or ``[IPV6]:PORT`` names;
    port None for none (a bare host or IPv6 address: gRPC's default port)."""
    if address.startswith("["):
        host, _, after = address[1:].partition("]")
        return host, after[1:] if after.startswith(":") else None
    host, colon, port = address.rpartition(":")
    return (host, port) if colon and ":" not in host else (address, None)
