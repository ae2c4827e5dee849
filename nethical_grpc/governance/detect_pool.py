"""Rule detection in worker processes, beside the event loop of a region node.

The detectors are regular expressions run by Python code: a node evaluating a stream of
actions spends about half of its time in them, holding the interpreter lock, so a second
core would sit idle while the event loop does everything.  A :class:`DetectionPool` runs
:func:`~nethical_grpc.governance.detectors.detect` in worker processes (``spawn``ed, so
they share nothing with the node's gRPC threads) for large batches, while the node parses
the next messages, runs the model and answers the previous batch.

* Same answers: a worker sends back each action's findings encoded
  (:func:`~nethical_grpc.governance.detectors.detect_encoded`: indexes into the fixed table
  of findings and the action's read-only claim), decoded here into exactly the findings
  ``detect`` gives in process, as one tuple shared by every action with the same answer
  (:func:`decoded`).
* Only batches of at least ``min_actions`` actions go to the workers: for a few actions
  the two process hops cost more than detecting them here.  A batch goes in slices of
  :data:`SLICE_ACTIONS`, so several workers share it.
* Never in the way: the workers start with the first large batch, in the background;
  until they have answered a first call (imports, compiled patterns), and whenever they
  fail (a worker killed, or hung: no answer within :data:`ANSWER_TIMEOUT_S` plus
  :data:`ANSWER_TIMEOUT_PER_ACTION_S` per action, and then killed), batches are detected
  in process, as without a pool.  A broken pool is replaced at most every
  :data:`RESTART_INTERVAL_S` seconds.  Workers die with the node (Linux
  ``PR_SET_PDEATHSIG``) and stop when it closes the pool (killed if they do not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Final

from nethical_grpc.governance.detectors import (
    Action,
    EncodedFindings,
    Violation,
    decode_findings,
    detect_encoded,
)
from nethical_grpc.parent_death import exit_with_parent

log = logging.getLogger(__name__)

#: Fewest actions of a batch that go to the workers (smaller ones are detected here).
MIN_POOL_ACTIONS: Final = 64
#: Actions per call to a worker: a large batch is shared out in slices of this size.
SLICE_ACTIONS: Final = 512
#: Least time between two starts of the workers after a failure.
RESTART_INTERVAL_S: Final = 10.0
#: How long a batch waits for the workers' answer: this, plus so much per action and per
#: character of the work queued in the pool when it was sent, its own included (far more
#: than detection takes: ~12 µs a typical action here, ~15 ms one of 64 KiB). A worker
#: past it is taken for hung (stopped, stuck): the workers are killed and the batch is
#: detected in process.
ANSWER_TIMEOUT_S: Final = 2.0
ANSWER_TIMEOUT_PER_ACTION_S: Final = 0.002
ANSWER_TIMEOUT_PER_CHAR_S: Final = 2e-6
#: How long new workers may take to answer their first call (imports, compiled
#: patterns: well under a second here) before they are taken for failed.
START_TIMEOUT_S: Final = 30.0
#: How long closing waits for the workers to exit before killing them.
CLOSE_TIMEOUT_S: Final = 5.0

# what a worker gets per action: the fields the detectors read
_Row = tuple[str, str, str, tuple[tuple[str, str], ...]]


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> float:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (a container's CPU limit: cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``)."""
    try:
        cores: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = period = None
    with contextlib.suppress(OSError, ValueError):
        text = (cgroup / "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota, period = int(text[0]), int(text[1])
    if quota is None:
        with contextlib.suppress(OSError, ValueError):
            quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    if quota is not None and period and quota > 0:
        cores = min(cores, quota / period)
    return cores


def default_workers() -> int:
    """One worker when the node may use two cores or more (:func:`usable_cores`), else
    none: with one core a worker would only take turns with the event loop."""
    return 1 if usable_cores() >= 2 else 0


def _start_worker(parent_pid: int) -> None:
    """In a worker: killed when the node dies, and deaf to Ctrl-C (the node stops its
    workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGKILL: a worker holds nothing to clean up, and a stopped one would hold SIGTERM
    exit_with_parent(parent_pid, signal.SIGKILL)


def _detect_rows(rows: Sequence[_Row]) -> list[EncodedFindings]:
    """In a worker: each action's findings, encoded."""
    return [
        detect_encoded(Action("", text, kind, intent, dict(context)))
        for text, kind, intent, context in rows
    ]


#: Decoded findings by their encoding (see :func:`decoded`); emptied when it reaches
#: :data:`_DECODED_SIZE` entries.
_DECODED: dict[EncodedFindings, tuple[Violation, ...]] = {}
_DECODED_SIZE: Final = 4096
_NONE_FOUND: Final[tuple[Violation, ...]] = ()


def decoded(encoded: EncodedFindings) -> tuple[Violation, ...]:
    """:func:`decode_findings` of a worker's answer for one action, as a tuple shared by
    every action with the same answer: few distinct answers occur (most actions find
    nothing), so a batch's findings decode at the cost of a lookup each, and
    :func:`~nethical_grpc.governance.decision.evaluate_actions` scores each distinct one
    once."""
    if not encoded[0]:
        return _NONE_FOUND
    found = _DECODED.get(encoded)
    if found is None:
        if len(_DECODED) >= _DECODED_SIZE:
            _DECODED.clear()
        found = _DECODED[encoded] = tuple(decode_findings(*encoded))
    return found


def _row(action: Action) -> _Row:
    context = action.context
    return (
        action.action_text,
        action.action_type,
        action.stated_intent,
        tuple(context.items()) if context else (),
    )


def _chars(row: _Row) -> int:
    text, _kind, intent, context = row
    return len(text) + len(intent) + (sum(len(v) for _, v in context) if context else 0)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a worker call's error as seen (it is handled where the batch is collected,
    or the batch was dropped): no "exception was never retrieved" in the log."""
    if not future.cancelled():
        future.exception()


class DetectionPool:
    """Worker processes that detect findings for large batches (see the module docstring).

    Used from one event loop; :meth:`submit` never blocks it.
    """

    def __init__(self, workers: int, min_actions: int = MIN_POOL_ACTIONS) -> None:
        if workers < 1:
            raise ValueError(f"a detection pool needs at least one worker, got {workers}")
        self.workers = workers
        self.min_actions = max(1, min_actions)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._failed_at: float | None = None
        self._closed = False
        # the workers' first calls, and when they were made (see START_TIMEOUT_S)
        self._warm: list[concurrent.futures.Future[list[EncodedFindings]]] = []
        self._started_at = 0.0
        # work sent to the workers and not yet answered (for the answer timeout)
        self._backlog_actions = 0
        self._backlog_chars = 0
        #: batches detected by the workers, and those detected here instead (not ready,
        #: failed) although large enough
        self.pooled_batches = 0
        self.inline_batches = 0

    @property
    def ready(self) -> bool:
        """Whether the workers run and have answered their first call."""
        return self._executor is not None and all(
            f.done() and not f.cancelled() and f.exception() is None for f in self._warm
        )

    def describe(self, counts: bool = True) -> str:
        """For GetNodeInfo: the workers and their state, and (``counts``) how many
        batches they and the node's own thread detected."""
        text = (
            f"{self.workers} worker process(es) for batches of {self.min_actions}+ "
            f"actions: {self._state()}"
        )
        if counts:
            text += f"; batches detected there {self.pooled_batches}, here {self.inline_batches}"
        return text

    def _state(self) -> str:
        if self._closed:
            return "closed"
        if self.ready:
            return "ready"
        if self._executor is not None:
            return "starting"
        if self._failed_at is not None:
            return "failed, detecting in process"
        return "not started (starts with the first large batch)"

    def start(self) -> None:
        """Start the workers in the background (nothing if they run or are starting)."""
        if self._executor is not None or self._closed:
            return
        log.info("starting %d rule-detection worker process(es)", self.workers)
        executor = self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )
        # a first call to each worker: its imports and compiled patterns, off the loop;
        # their answers (or a failure, or a hang) are looked at by _check_start
        self._warm = [executor.submit(_detect_rows, []) for _ in range(self.workers)]
        self._started_at = time.monotonic()

    def _check_start(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        """Workers not ready yet: failed if a first call failed, or not all answered
        within :data:`START_TIMEOUT_S` (a worker killed or stopped while it started)."""
        for future in self._warm:
            if future.done() and (future.cancelled() or future.exception() is not None):
                exc = future.exception() if not future.cancelled() else None
                self._failed(executor, exc or RuntimeError("first call cancelled"))
                return
        if time.monotonic() - self._started_at > START_TIMEOUT_S:
            self._failed(executor, TimeoutError("no answer to the first call"))

    def submit(
        self, actions: Sequence[Action]
    ) -> asyncio.Future[list[tuple[Violation, ...]] | None] | None:
        """Start detecting ``actions`` in the workers: a future of their findings (each
        as :func:`detect` gives it, as a tuple: actions with the same findings share one,
        see :func:`decoded`), resolved to ``None`` if the workers failed; or
        ``None`` now when this batch is to be detected here (too small, workers not ready)."""
        if len(actions) < self.min_actions or self._closed:
            return None
        if self._executor is None and (
            self._failed_at is None or time.monotonic() - self._failed_at >= RESTART_INTERVAL_S
        ):
            self.start()
        executor = self._executor
        if executor is None or not self.ready:
            if executor is not None:
                self._check_start(executor)
            self.inline_batches += 1
            return None
        rows = [_row(a) for a in actions]
        parts = []
        try:
            for i in range(0, len(rows), SLICE_ACTIONS):
                part = rows[i : i + SLICE_ACTIONS]
                future = asyncio.wrap_future(executor.submit(_detect_rows, part))
                future.add_done_callback(_retrieve)
                future.add_done_callback(self._answered(len(part), sum(map(_chars, part))))
                parts.append(future)
        except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: shut down
            for future in parts:
                future.cancel()
            self._failed(executor, exc)
            self.inline_batches += 1
            return None
        self.pooled_batches += 1
        # the time the workers may take: for all the work queued before this batch too
        timeout_s = (
            ANSWER_TIMEOUT_S
            + ANSWER_TIMEOUT_PER_ACTION_S * self._backlog_actions
            + ANSWER_TIMEOUT_PER_CHAR_S * self._backlog_chars
        )
        return asyncio.ensure_future(self._collect(executor, parts, timeout_s))

    def _answered(self, actions: int, chars: int) -> Callable[[asyncio.Future[Any]], None]:
        """Count a slice in the backlog until its future is done (answered, failed or
        dropped)."""
        self._backlog_actions += actions
        self._backlog_chars += chars

        def done(_: asyncio.Future[Any]) -> None:
            self._backlog_actions -= actions
            self._backlog_chars -= chars

        return done

    async def _collect(
        self,
        executor: concurrent.futures.ProcessPoolExecutor,
        parts: list[asyncio.Future[list[EncodedFindings]]],
        timeout_s: float,
    ) -> list[tuple[Violation, ...]] | None:
        try:
            _done, pending = await asyncio.wait(parts, timeout=timeout_s)
        except asyncio.CancelledError:  # the caller went away: the answers are dropped
            for part in parts:
                part.cancel()
            raise
        if pending:
            for part in pending:
                part.cancel()
            self._failed(executor, TimeoutError(f"no answer in {timeout_s:.1f} s"))
            return None
        answers = []
        for part in parts:
            if part.cancelled():
                return None  # the pool was shut down under this batch
            exc = part.exception()
            if isinstance(exc, BrokenProcessPool):
                self._failed(executor, exc)
                return None
            if exc is not None:  # a bug in a worker: detecting here raises it where it belongs
                log.error("rule detection in a worker failed (%r); detecting in process", exc)
                return None
            answers.append(part.result())
        return [decoded(encoded) for answer in answers for encoded in answer]

    def _failed(self, executor: concurrent.futures.ProcessPoolExecutor, exc: BaseException) -> None:
        if self._executor is not executor:
            return  # reported already
        log.warning(
            "rule detection workers failed (%s): detecting in process, restarting them in %.0f s",
            type(exc).__name__,
            RESTART_INTERVAL_S,
        )
        self._executor, self._failed_at = None, time.monotonic()
        # a hung worker would never take the executor's request to stop: killed
        processes = _processes(executor)
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()

    async def close(self) -> None:
        """Stop the workers: they are asked to exit and, past :data:`CLOSE_TIMEOUT_S`
        (a hung one), killed; waited for off the event loop."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            processes = _processes(executor)
            executor.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(_reap, processes, CLOSE_TIMEOUT_S)


def _processes(
    executor: concurrent.futures.ProcessPoolExecutor,
) -> list[multiprocessing.process.BaseProcess]:
    """The executor's worker processes (it keeps them in ``_processes``; none if that
    ever changes, and then a hung worker is left to its parent-death signal)."""
    found = getattr(executor, "_processes", None) or {}
    return list(found.values())


def _reap(processes: Sequence[multiprocessing.process.BaseProcess], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for the processes to end, then kill those that did not.
    Their sentinels tell (not ``join``: the executor's own thread reaps them too)."""
    waiting: dict[object, multiprocessing.process.BaseProcess] = {}
    for process in processes:
        with contextlib.suppress(ValueError):  # a closed process object: ended
            waiting[process.sentinel] = process
    deadline = time.monotonic() + timeout_s
    while waiting and (left := deadline - time.monotonic()) > 0:
        sentinels = [fd for fd in waiting if isinstance(fd, int)]
        for ended in multiprocessing.connection.wait(sentinels, left):
            waiting.pop(ended, None)
    for process in waiting.values():
        log.warning("rule detection worker %s did not exit: killed", process.pid)
        with contextlib.suppress(Exception):
            process.kill()
