"""What a region node needs, measured by bench/, for the deployment tests (Kubernetes and
Compose) to check their limits against: memory for its windows and their restore, and
time to start and restore."""

from __future__ import annotations

from typing import Any

from region_node.windows import WindowConfig

# bench/memory.py: 10,000 series x 6 windows (values spanning four decades) took 402 MB
# against 222 MB idle, about 3 KB a window; an idle node, under 256 MiB
WINDOW_BYTES = 3 * 1024
IDLE_BYTES = 256 * 2**20

# bench/restore.py --series 1500 --hours 1 (✺): restoring 540,000 windows peaked at
# 1,755.0 MB above the process's start, about 3,250 bytes a window
RESTORE_PEAK_BYTES_PER_WINDOW = 3250
#: what a limit keeps above that peak (the figure varied 4% between runs)
RESTORE_MARGIN = 1.10

# the same run: 540,000 stored windows restored in 73.0 s on one core (35.6 s once they
# decoded in batches: the slower figure leaves a margin); the first Numba compilation at
# a start takes up to two minutes
RESTORE_S_PER_WINDOW = 73.0 / 540_000
COMPILE_S = 120.0


def most_windows_per_series(args: Any) -> int:
    """The most windows a node started with ``args`` (the CLI's) keeps per series."""
    return WindowConfig(
        window_ns=args.window,
        retention_ns=args.retention,
        rollup_after_ns=args.rollup_after,
        rollup_window_ns=args.rollup_window,
    ).most_windows_per_series


def steady_bytes(args: Any) -> float:
    """A node's memory with every window it may keep."""
    return IDLE_BYTES + args.max_series * most_windows_per_series(args) * WINDOW_BYTES


def restore_peak_bytes(args: Any) -> float:
    """A restarted node's peak memory while it restores every window it may keep."""
    windows = args.max_series * most_windows_per_series(args)
    return IDLE_BYTES + windows * RESTORE_PEAK_BYTES_PER_WINDOW * RESTORE_MARGIN


def start_s(args: Any, cores: float) -> float:
    """Seconds from a node's start to SERVING after a restart, at most: the compilation,
    then the restore of every window it may keep on ``cores`` (at most one: it restores
    on one)."""
    windows = args.max_series * most_windows_per_series(args)
    return COMPILE_S + windows * RESTORE_S_PER_WINDOW / min(1.0, cores)
