"""Which of grpcio's I/O engines the mesh's processes use, chosen before gRPC loads.

grpcio 1.85 does a connection's socket work on its EventEngine threads and hands each
completed operation to the thread that waits for completions (grpc.aio's poller
thread), which wakes the event loop. With its EventEngine endpoint experiments turned
off, gRPC polls the sockets on that waiting thread itself (its classic I/O manager,
"iomgr"): one thread hop less for every message. On the development machine this
served unary Evaluate 10-14% faster and took the 50-region global query's median from
about 30 to 26 ms; a bare health Check, which needs next to nothing of the event loop,
went 6-10% slower (README, Benchmarks).

gRPC reads ``GRPC_EXPERIMENTS`` once, when it loads, so :func:`choose_io_engine` runs
at the start of every ``nethical-mesh`` command, before anything imports ``grpc``; the
processes a command starts inherit the choice. ``NETHICAL_GRPC_IO_ENGINE`` selects:
``iomgr`` (the default) or ``event-engine`` (grpcio's own default). A
``GRPC_EXPERIMENTS`` the environment already sets is left as it is: whoever set it
steers gRPC directly. The experiments are named by grpcio and not a stable interface,
so they are only set on the grpcio releases they were checked on
(:data:`CHECKED_GRPCIO`); on any other, gRPC keeps its default and the startup log says so.

This module must not import ``grpc``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import MutableMapping
from typing import Final

__all__ = [
    "CHECKED_GRPCIO",
    "ENGINE_ENV",
    "IOMGR_EXPERIMENTS",
    "choose_io_engine",
    "installed_grpcio",
]

#: The environment variable that selects the engine.
ENGINE_ENV: Final = "NETHICAL_GRPC_IO_ENGINE"
IOMGR: Final = "iomgr"
EVENT_ENGINE: Final = "event-engine"
#: ``GRPC_EXPERIMENTS`` for the classic I/O manager: every EventEngine endpoint
#: experiment off (clients, listeners, other endpoints, callback completion queues).
IOMGR_EXPERIMENTS: Final = (
    "-event_engine_client,-event_engine_listener,"
    "-event_engine_for_all_other_endpoints,-event_engine_callback_cq"
)
#: grpcio releases (major, minor) whose experiments these are.
CHECKED_GRPCIO: Final = frozenset({(1, 85)})


def installed_grpcio() -> str | None:
    """The installed grpcio's version, read without loading it (``None``: not found)."""
    try:
        return importlib.metadata.version("grpcio")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str | None) -> tuple[int, int] | None:
    if version is None:
        return None
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def choose_io_engine(environ: MutableMapping[str, str], grpcio_version: str | None) -> str:
    """Set ``GRPC_EXPERIMENTS`` in ``environ`` for the engine ``NETHICAL_GRPC_IO_ENGINE``
    selects, for a process whose gRPC has not loaded yet; the line the startup log
    gives the choice. ``ValueError`` for a value that is no engine."""
    raw = environ.get(ENGINE_ENV, "")
    engine = raw.strip().lower() or IOMGR
    if engine not in (IOMGR, EVENT_ENGINE):
        raise ValueError(f"{ENGINE_ENV} must be {IOMGR} or {EVENT_ENGINE}, got {raw!r}")
    given = environ.get("GRPC_EXPERIMENTS")
    if given is not None:
        if given == IOMGR_EXPERIMENTS:  # set by the command that started this process
            return f"gRPC I/O: {IOMGR} (GRPC_EXPERIMENTS={given})"
        return f"gRPC I/O: as GRPC_EXPERIMENTS={given!r} in the environment sets it"
    if engine == EVENT_ENGINE:
        return f"gRPC I/O: grpcio's EventEngine ({ENGINE_ENV}={EVENT_ENGINE})"
    if _release(grpcio_version) not in CHECKED_GRPCIO:
        return (
            f"gRPC I/O: grpcio {grpcio_version}'s default (the {IOMGR} setting is checked on "
            f"grpcio {', '.join(f'{a}.{b}' for a, b in sorted(CHECKED_GRPCIO))} only)"
        )
    environ["GRPC_EXPERIMENTS"] = IOMGR_EXPERIMENTS
    return f"gRPC I/O: {IOMGR} (GRPC_EXPERIMENTS={IOMGR_EXPERIMENTS})"
