"""A child process that must not outlive its parent (no orphan servers or workers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from typing import Final

_PR_SET_PDEATHSIG: Final = 1


def exit_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a child of ``parent_pid``: signal ``sig`` when that parent dies (Linux
    ``PR_SET_PDEATHSIG``; elsewhere nothing), and now if it has died already.

    The kernel sends it when the parent's *thread* that started this child ends: a
    parent starts such children from its main thread, not from a worker thread that may
    end before the process does."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
