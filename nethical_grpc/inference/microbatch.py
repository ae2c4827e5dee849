"""Asyncio micro-batching: many concurrent single-row requests, one model call.

:class:`MicroBatcher` queues the rows that concurrent coroutines submit and hands them to a
batch function ``fn`` (e.g. :meth:`InferenceEngine.predict_batch
<nethical_grpc.inference.engine.InferenceEngine.predict_batch>`) as one stacked array:

* a batch is sent when it holds ``max_batch`` rows, or ``max_delay_s`` after its oldest row
  was queued, whichever comes first; a batch never holds more than ``max_batch`` rows;
* one batch runs at a time, in a worker thread (``executor``, or a one-thread pool the
  batcher owns), so the event loop stays free; rows queued meanwhile form the next batch;
* each caller gets the entries of ``fn``'s result that belong to its rows; when ``fn``
  raises (or answers with the wrong shape) for a batch of several callers, each caller's
  rows run again on their own, so only the callers whose rows fail get the exception
  (:func:`answer_apart`, which a caller that stacked several callers' rows itself uses too);
  callers' rows that cannot be stacked (widths or dtypes that differ, with no ``validate``
  to make them alike) run each caller's on their own from the start;
  :meth:`MicroBatcher.submit_apart` queues such stacked rows one caller (row) at a time and
  answers each row with its result or its own exception;
* a caller that is cancelled before its batch starts is left out of it, and its rows no
  longer count towards a full batch;
* :meth:`MicroBatcher.close` stops accepting rows, finishes every queued row, and then shuts
  down the batcher's own thread pool.

Rows are checked when submitted (1-D, and by the optional ``validate`` callable, e.g.
:meth:`InferenceEngine.validate_input`), so one caller's bad row is that caller's
``ValueError`` and never fails a batch shared with others.  A batcher belongs to the event
loop of its first submit.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from nethical_grpc.event_wait import wait_until

__all__ = ["Answer", "BatchStats", "MicroBatcher", "answer_apart"]

BatchFn = Callable[[npt.NDArray[Any]], npt.ArrayLike]
Validator = Callable[[npt.NDArray[Any]], object]
#: One caller's share of a shared call: its results, or the exception its rows met.
Answer = npt.NDArray[np.float64] | Exception


async def answer_apart(
    call: Callable[[npt.NDArray[Any]], Awaitable[npt.NDArray[np.float64]]],
    rows: npt.NDArray[Any],
    sizes: Sequence[int],
) -> list[Answer]:
    """Several callers' ``rows`` (stacked, ``sizes[i]`` rows for caller ``i``) in one
    ``call``, each caller's share of its ``(n,)`` answer; when ``call`` raises (an
    ``Exception``) for several callers, each caller's rows are called again on their own,
    so only the callers whose own rows fail get an exception (their entry in the list).
    Anything else ``call`` raises (a cancellation) propagates."""
    try:
        result = await call(rows)
    except Exception as exc:
        if len(sizes) == 1:
            return [exc]
        answers: list[Answer] = []
        start = 0
        for size in sizes:
            answers += await answer_apart(call, rows[start : start + size], (size,))
            start += size
        return answers
    bounds = np.cumsum([0, *sizes])
    return [result[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


@dataclass
class BatchStats:
    """Counters since construction: ``batches`` (calls of ``fn``), ``rows`` (rows sent),
    ``failed_batches`` (calls that raised or answered wrongly) and ``max_batch_seen``."""

    batches: int = 0
    rows: int = 0
    failed_batches: int = 0
    max_batch_seen: int = 0

    @property
    def mean_batch(self) -> float:
        """Rows per ``fn`` call (0.0 before the first)."""
        return self.rows / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Entry:
    rows: npt.NDArray[Any]  # (size, width), size <= max_batch
    future: asyncio.Future[npt.NDArray[np.float64]]
    queued_at: float
    size: int
    # its rows count in MicroBatcher._queued_rows (until taken, or its caller goes away)
    counted: bool = True


class MicroBatcher:
    """Stack concurrent submissions into bounded batches for ``fn``.

    ``fn`` takes an ``(n, width)`` array and returns ``n`` numbers (anything
    ``np.asarray`` turns into shape ``(n,)`` or ``(n, 1)``).  ``max_batch >= 1`` and
    ``0 <= max_delay_s <= 10`` (seconds) or ``ValueError``.  ``executor``: where ``fn`` runs;
    ``None`` creates a one-thread pool owned (and shut down) by the batcher.  ``validate``:
    called on each submitted ``(k, width)`` array before it is queued; whatever it raises
    goes to that caller; if it returns an array, that array is queued instead (its row
    count must be the caller's, else ``ValueError``; so
    ``InferenceEngine.validate_input`` both checks and converts).  ``inline=True`` runs
    ``fn`` on the event loop itself, for a model that answers a batch faster than a hop to
    a worker thread costs (a small model on a CPU: ~0.05-0.2 ms a call against ~0.3 ms a
    hop, measured here); rows that arrive while a batch runs still form the next batch.

    Attributes: ``stats`` (:class:`BatchStats`), ``max_batch``, ``max_delay_s``.
    """

    def __init__(
        self,
        fn: BatchFn,
        max_batch: int = 256,
        max_delay_s: float = 0.002,
        executor: Executor | None = None,
        *,
        validate: Validator | None = None,
        inline: bool = False,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        try:
            delay = float(max_delay_s)
        except (TypeError, ValueError):
            delay = -1.0
        if not 0.0 <= delay <= 10.0:
            raise ValueError(f"max_delay_s must be in [0, 10] seconds, got {max_delay_s!r}")
        self._fn = fn
        self.max_batch = max_batch
        self.max_delay_s = delay
        self._validate = validate
        if inline and executor is not None:
            raise ValueError("inline batches run on the event loop: give no executor")
        self._inline = inline
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="microbatch"
        )
        self._queue: deque[_Entry] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closed = False
        self.stats = BatchStats()

    # ------------------------------------------------------------------ submitting

    async def submit(self, row: npt.ArrayLike) -> float:
        """Queue one row (1-D) and wait for its result.

        Raises ``ValueError`` if the row is not 1-D or ``validate`` rejects it,
        ``RuntimeError`` after :meth:`close`, and whatever ``fn`` raised for the row.
        """
        arr = np.asarray(row)
        if arr.ndim != 1:
            raise ValueError(f"submit() takes one 1-D row, got shape {arr.shape}")
        out = await self._enqueue([arr[None, :]])
        return float(out[0])

    async def submit_many(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Queue a 2-D array of rows; returns their results, shape ``(n,)``, in order.

        More than ``max_batch`` rows are split into chunks of at most ``max_batch`` (which
        may land in different batches).  Errors as :meth:`submit`.
        """
        arr = np.asarray(rows)
        if arr.ndim != 2:
            raise ValueError(f"submit_many() takes a 2-D array of rows, got shape {arr.shape}")
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        chunks = [arr[i : i + self.max_batch] for i in range(0, arr.shape[0], self.max_batch)]
        return await self._enqueue(chunks)

    async def submit_apart(self, rows: npt.ArrayLike) -> list[Answer]:
        """Queue a 2-D array whose rows are different callers' (rows a caller stacked
        itself), each row on its own as if :meth:`submit` had queued it: one answer per
        row, its results (shape ``(1,)``) or the exception that row met (from ``validate``
        or ``fn``), so one row's failure is never another's.  Raises ``ValueError`` for an
        array that is not 2-D, ``RuntimeError`` after :meth:`close`."""
        arr = np.asarray(rows)
        if arr.ndim != 2:
            raise ValueError(f"submit_apart() takes a 2-D array of rows, got shape {arr.shape}")
        if self._closing:
            raise RuntimeError("the micro-batcher is closed")
        n = int(arr.shape[0])
        answers: list[Answer | None] = [None] * n
        chunks: list[npt.NDArray[Any]] = []
        try:  # every row at once (the usual case), then row by row to find the bad ones
            checked = self._checked(arr)
            chunks = [checked[i : i + 1] for i in range(n)]
            queued = list(range(n))
        except Exception:
            queued = []
            for i in range(n):
                try:
                    chunks.append(self._checked(arr[i : i + 1]))
                    queued.append(i)
                except Exception as exc:
                    answers[i] = exc
        if chunks:
            futures = self._queue_chunks(chunks)
            try:
                results = await asyncio.gather(*futures, return_exceptions=True)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            for i, result in zip(queued, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result  # the batcher stopped (cancelled)
                answers[i] = result
        return cast(list[Answer], answers)  # every row has its answer now

    def _checked(self, chunk: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``chunk`` as ``validate`` checked (and maybe converted) it."""
        if self._validate is None:
            return chunk
        result = self._validate(chunk)
        if not isinstance(result, np.ndarray):
            return chunk
        if result.ndim != 2 or result.shape[0] != chunk.shape[0]:
            # more rows than max_batch would never fit a batch (the worker would spin)
            raise ValueError(
                f"validate returned shape {result.shape} for {chunk.shape[0]} row(s); "
                f"expected ({chunk.shape[0]}, width)"
            )
        return result

    async def _enqueue(self, chunks: list[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        if self._closing:
            raise RuntimeError("the micro-batcher is closed")
        futures = self._queue_chunks([self._checked(chunk) for chunk in chunks])
        if len(futures) == 1:
            return await futures[0]
        try:
            parts = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return np.concatenate(parts)

    def _queue_chunks(
        self, chunks: list[npt.NDArray[Any]]
    ) -> list[asyncio.Future[npt.NDArray[np.float64]]]:
        """Queue checked chunks, one entry each; their futures."""
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        assert self._wake is not None
        futures = []
        now = loop.time()
        was_idle = not self._queue
        for chunk in chunks:
            fut: asyncio.Future[npt.NDArray[np.float64]] = loop.create_future()
            entry = _Entry(chunk, fut, now, int(chunk.shape[0]))
            # a caller that goes away no longer counts towards a full batch
            fut.add_done_callback(functools.partial(self._uncount, entry))
            self._queue.append(entry)
            self._queued_rows += entry.size
            futures.append(fut)
        if was_idle or self._queued_rows >= self.max_batch:
            self._wake.set()  # the worker waits for a first row or for a full batch
        return futures

    def _uncount(self, entry: _Entry, _future: object = None) -> None:
        """Stop counting ``entry``'s rows as queued (once: taken, or its caller gone; also
        its future's done-callback, which passes the future)."""
        if entry.counted:
            entry.counted = False
            self._queued_rows -= entry.size

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self._wake = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("a MicroBatcher is bound to the event loop of its first submit")
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="microbatch-worker")

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        assert self._loop is not None and self._wake is not None
        loop = self._loop
        try:
            while self._queue or not self._closing:
                self._drop_gone_at_front()
                if not self._queue:
                    if self._closing:  # only callers that went away were left
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await wait_until(
                    lambda: self._full() or self._closing,
                    self._wake,
                    self._queue[0].queued_at + self.max_delay_s,
                )
                batch = self._take()
                if batch:
                    await self._execute(batch, loop)
        except BaseException as exc:  # cancelled or a bug: never leave callers hanging
            self._fail_all(exc)
            raise

    def _drop_gone_at_front(self) -> None:
        """Pop the entries at the queue's front whose callers went away (the oldest live
        one's age is what the wait for ``max_delay_s`` goes by)."""
        queue = self._queue
        while queue and queue[0].future.done():
            self._uncount(queue.popleft())

    def _full(self) -> bool:
        """The queued rows of callers still waiting fill a batch.  A caller cancelled in
        this turn of the loop is not counted even though its future's done-callback (which
        uncounts it) has not run yet."""
        if self._queued_rows < self.max_batch:
            return False
        for entry in self._queue:
            if entry.future.done():
                self._uncount(entry)
        return self._queued_rows >= self.max_batch

    def _take(self) -> list[_Entry]:
        """Pop entries (skipping cancelled ones) while they fit in ``max_batch`` rows."""
        batch: list[_Entry] = []
        rows = 0
        while self._queue:
            entry = self._queue[0]
            if entry.future.done():
                self._queue.popleft()
                self._uncount(entry)
                continue
            if rows + entry.size > self.max_batch:
                break
            self._queue.popleft()
            self._uncount(entry)
            batch.append(entry)
            rows += entry.size
        return batch

    async def _execute(self, batch: list[_Entry], loop: asyncio.AbstractEventLoop) -> None:
        async def call(rows: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
            return await self._call(rows, loop)

        try:
            try:
                stacked = np.concatenate([e.rows for e in batch]) if len(batch) > 1 else None
            except (ValueError, TypeError):
                # widths or dtypes differ (no validate made the rows alike): each caller's
                # rows go on their own, as after a failed shared call
                answers: list[Answer] = []
                for e in batch:
                    answers += await answer_apart(call, e.rows, (e.size,))
            else:
                rows = batch[0].rows if stacked is None else stacked
                answers = await answer_apart(call, rows, [e.size for e in batch])
        except asyncio.CancelledError:
            stopped = RuntimeError("the micro-batcher was stopped while running a batch")
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(stopped)
            raise
        for e, answer in zip(batch, answers, strict=True):
            if e.future.done():
                continue
            if isinstance(answer, Exception):
                e.future.set_exception(answer)
            else:
                e.future.set_result(answer)

    async def _call(
        self, rows: npt.NDArray[Any], loop: asyncio.AbstractEventLoop
    ) -> npt.NDArray[np.float64]:
        """One call of ``fn`` (counted in ``stats``), its answer checked to be ``(n,)``."""
        n = int(rows.shape[0])
        self.stats.batches += 1
        self.stats.rows += n
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, n)
        try:
            if self._inline:
                raw = self._fn(rows)
            else:
                raw = await loop.run_in_executor(self._executor, self._fn, rows)
            result = np.asarray(raw, dtype=np.float64)
            if result.shape not in ((n,), (n, 1)):
                raise RuntimeError(
                    f"the batch function returned shape {result.shape} for {n} rows; "
                    f"expected ({n},)"
                )
        except Exception:
            self.stats.failed_batches += 1
            raise
        return result.reshape(n)

    def _fail_all(self, exc: BaseException) -> None:
        err = exc if isinstance(exc, Exception) else RuntimeError("the micro-batcher stopped")
        while self._queue:
            entry = self._queue.popleft()
            self._uncount(entry)
            if not entry.future.done():
                entry.future.set_exception(err)

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Stop accepting rows, wait until every queued row has its answer, and shut down
        the batcher's own thread pool (a given ``executor`` is left running).  Idempotent."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._worker is not None:
            await asyncio.shield(self._worker)
        if self._own_executor and not self._closed:
            self._executor.shutdown(wait=True)
        self._closed = True

    async def __aenter__(self) -> MicroBatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
