"""Optional parts of the mesh: which implementation is live, reported once at startup."""

from __future__ import annotations

import functools
import importlib.util
import logging

from nethical_grpc.jit import is_jit_available, jit_unavailable_reason

log = logging.getLogger("nethical_grpc.components")

_reported = False


@functools.cache
def _components() -> dict[str, str]:
    """Probed once per process: what is installed does not change while it runs."""
    out: dict[str, str] = {}
    out["jit"] = "numba" if is_jit_available() else f"numpy ({jit_unavailable_reason()})"
    if importlib.util.find_spec("torch") is None:
        out["gpu"] = "unavailable (torch not installed)"
    return out


def components() -> dict[str, str]:
    """Map each optional part to the implementation in use (and why, if a fallback)."""
    return dict(_components())


def report_once() -> dict[str, str]:
    """Log the optional parts once per process; return the same map."""
    global _reported
    found = components()
    if not _reported:
        _reported = True
        for name, impl in sorted(found.items()):
            log.info("component %s: %s", name, impl)
    return found
