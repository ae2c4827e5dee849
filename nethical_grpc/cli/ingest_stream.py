"""``nethical-mesh ingest --stream``: values sent as they arrive, for input that stays
open (``tail -f metrics.log | nethical-mesh ingest latency_ms --stream``).

A reader thread hands the input's lines to the event loop, which parses all that arrived
since it last looked at once (at most about a MiB waits: the thread reads on as the
batches go). A batch goes once
``--batch-values`` values wait, ``--flush-after`` after the first of them arrived, and
at the end of the input; each batch is one Ingest call, acknowledged before the next is
sent, so what the node applied is known at every moment. A token that is not a number
stops the command (exit 2) naming its line, after the batches before it; Ctrl-C or
SIGTERM sends what was read and stops (exit 0), and a second one stops at once (exit
130, saying what the node applied: a node that does not answer was waited for until
``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

import grpc

from nethical_grpc import client
from nethical_grpc.cli import observations
from nethical_grpc.cli.client_commands import (
    BOM,
    open_channel,
    print_json,
    report_call_error,
    stdin,
    stop_on_signals,
)
from nethical_grpc.cli.observations import Observations, parse_piece
from nethical_grpc.cli.region_commands import applied_text, ingest_request
from nethical_grpc.cli.table import counted


@dataclass
class _Sent:
    batches: int = 0
    values: int = 0
    duplicates: int = 0

    def text(self, where: str = "") -> str:
        return applied_text(self.values, self.batches, self.duplicates, where)


def _open_input(source: str) -> TextIO:
    """``source`` opened for reading (``-``: stdin); ``OSError`` when it cannot be."""
    return stdin() if source == "-" else open(source, encoding="utf-8")


@dataclass
class _Taken:
    """What the input held when the event loop took it: text of whole lines (or, in a
    long line of plain values, whole tokens), whether the input ended after it, and the
    error that ended the reading (a file that is not text, say)."""

    text: str
    ended: bool = False
    error: Exception | None = None


class _Input:
    """The input, read by a thread and taken by the event loop as a run of text: all
    that arrived since it last took, parsed at once (a line at a time, each line of a
    file took 20 µs). At most about :data:`observations.PIECE_CHARS` characters wait;
    the thread reads on once they are taken (it read a whole file ahead of a slower
    node, into memory)."""

    def __init__(self, stream: TextIO, timed: bool, loop: asyncio.AbstractEventLoop) -> None:
        self._stream, self._timed, self._loop = stream, timed, loop
        self._pieces: list[str] = []
        self._chars = 0
        self._ended = self._closed = False
        self._error: Exception | None = None
        self._room = threading.Condition()
        self._ready = asyncio.Event()
        threading.Thread(target=self._read, name="ingest-input", daemon=True).start()

    def _read(self) -> None:
        error: Exception | None = None
        partial = ""  # a line not ended yet (a long one, or the input's last)
        first = True
        try:
            while piece := self._stream.readline(observations.PIECE_CHARS):
                if first:  # a byte-order mark is not the input's
                    piece, first = piece.removeprefix(BOM), False
                partial += piece
                if partial.endswith("\n"):
                    piece, partial = partial, ""
                elif self._timed or len(partial) < observations.PIECE_CHARS:
                    continue
                else:  # a long line of plain values: up to the end of its last token
                    cut = max(partial.rfind(c) for c in observations.PLAIN_CUTS) + 1
                    if not cut:
                        continue
                    piece, partial = partial[:cut], partial[cut:]
                if not self._put(piece):
                    return
            if partial and not self._put(partial):
                return
        except Exception as exc:  # any: a thread that died unsaid left the command
            error = exc  # waiting for input forever (a file that is not text, say)
        with self._room:
            self._ended, self._error = True, error
        self._wake()

    def _put(self, piece: str) -> bool:
        """``piece`` handed on, once there is room; False when the command stopped."""
        with self._room:
            while self._chars >= observations.PIECE_CHARS and not self._closed:
                self._room.wait()
            if self._closed:
                return False
            was_empty = not self._pieces
            self._pieces.append(piece)
            self._chars += len(piece)
        if was_empty:
            self._wake()
        return True

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed first (a stop)
            self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> _Taken:
        """What arrived since the last take, once something has (or the input ended)."""
        await self._ready.wait()
        return self.take_now()

    def take_now(self) -> _Taken:
        """What arrived since the last take (perhaps nothing)."""
        with self._room:
            text = "".join(self._pieces)
            self._pieces, self._chars = [], 0
            self._ready.clear()
            self._room.notify()
            return _Taken(text, self._ended, self._error)

    def close(self) -> None:
        """The thread reads no more (the command stops)."""
        with self._room:
            self._closed = True
            self._room.notify()


class _Batcher:
    """Observations waiting to be sent, sent in batches of at most ``--batch-values``."""

    def __init__(self, args: argparse.Namespace, channel: grpc.aio.Channel) -> None:
        self.args, self.channel = args, channel
        self.waiting: list[Observations] = []
        # values in ``waiting``, kept as they come: summed over the list for each line,
        # a batch of one-value lines cost quadratic time (1.8 s a batch of 10,000)
        self.count = 0
        self.first_at: float | None = None  # when the oldest waiting value arrived
        self.sent = _Sent()
        self.in_flight = 0  # values of the batch sent and not yet acknowledged

    def add(self, observations: Observations) -> None:
        if len(observations):
            self.waiting.append(observations)
            self.count += len(observations)
            if self.first_at is None:
                self.first_at = time.monotonic()

    def _take(self, keep: int = 0) -> Observations:
        """What waits but the last ``keep``, which stay waiting (arrived now)."""
        waiting = Observations.joined(self.waiting)
        cut = len(waiting) - keep
        self.waiting, self.count = ([waiting[cut:]], keep) if keep else ([], 0)
        self.first_at = time.monotonic() if keep else None
        return waiting[:cut]

    async def send_full(self) -> None:
        """Send every full batch that waits."""
        size = self.args.batch_values
        if self.count < size:
            return
        full = self._take(keep=self.count % size)
        for at in range(0, len(full), size):
            await self._send(full[at : at + size])

    async def send_all(self) -> None:
        """Send whatever waits (full batches, then the rest)."""
        await self.send_full()
        if self.count:
            await self._send(self._take())

    async def _send(self, batch: Observations) -> None:
        n = self.sent.batches + self.sent.duplicates
        request = ingest_request(self.args, batch, n)
        self.in_flight = len(batch)  # still, if the call is cancelled (a second Ctrl-C)
        answer = await client.ingest(self.channel, [request], timeout=self.args.timeout)
        self.in_flight = 0
        self.sent.batches += answer.accepted_batches
        self.sent.values += answer.accepted_values
        self.sent.duplicates += answer.duplicate_batches
        if self.args.json:
            print_json(answer, indent=None, always_print_fields_with_no_presence=True)
        else:
            state = "applied before, skipped" if answer.duplicate_batches else "applied"
            print(f"batch {n}: {counted(len(batch), 'value', 'values')} {state}", flush=True)


async def run_ingest_stream(args: argparse.Namespace) -> int:
    batcher: _Batcher | None = None

    def stopping() -> None:
        """At the first Ctrl-C while a batch waits for its answer (a node that does not
        answer: until --timeout), how to stop without waiting."""
        if batcher is not None and batcher.in_flight:
            print(
                "stopping once the batch sent is answered and what was read is sent "
                "(Ctrl-C again stops at once)",
                file=sys.stderr,
                flush=True,
            )

    stop = stop_on_signals(stopping)
    try:
        # opened here: a file that cannot be read ends the command before anything is sent
        stream = _open_input(args.file)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = _Input(stream, args.timed, asyncio.get_running_loop())
    flush_s = args.flush_after / 1e9
    status = 0
    async with open_channel(args) as channel:
        batcher = _Batcher(args, channel)
        stopped = asyncio.ensure_future(stop.wait())
        line = 1  # the line the next text starts on

        def read(taken: _Taken) -> bool:
            """``taken``'s observations added to what waits; False when it ends the
            input (its end, or a mistake: the observations before its line added)."""
            nonlocal line, status
            part, mistake = parse_piece(taken.text, args.file, line, args.timed)
            batcher.add(part)
            line += taken.text.count("\n")
            if mistake is not None or taken.error is not None:
                print(f"error: {mistake or f'{args.file}: {taken.error}'}", file=sys.stderr)
                status = 2
                return False
            return not taken.ended

        try:
            while True:
                due = None if batcher.first_at is None else batcher.first_at + flush_s
                wait = None if due is None else max(0.0, due - time.monotonic())
                taking = asyncio.ensure_future(source.take())
                done, _ = await asyncio.wait(
                    {taking, stopped}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if stop.is_set():  # what was read is sent, and no more
                    taking.cancel()  # unless it took already
                    took = taking.done() and not taking.cancelled()
                    if not took or read(taking.result()):
                        read(source.take_now())
                    break
                if taking not in done:
                    taking.cancel()
                    await batcher.send_all()  # --flush-after since the oldest value
                    continue
                if not read(taking.result()):
                    break
                await batcher.send_full()
            source.close()
            await batcher.send_all()
        except grpc.RpcError as err:
            await report_call_error(args, channel, err)
            print(f"  before it: {batcher.sent.text()}", file=sys.stderr)
            return 1
        except asyncio.CancelledError:  # a second Ctrl-C: what the node said it applied
            print(f"stopped at once: {batcher.sent.text()}", file=sys.stderr)
            if batcher.in_flight:
                batch = counted(batcher.in_flight, "value", "values")
                print(f"  a batch of {batch} got no answer: it may be applied", file=sys.stderr)
            raise
        finally:
            source.close()
            stopped.cancel()
    if status:
        print(f"  before it: {batcher.sent.text()}", file=sys.stderr)
        return status
    if not args.json:
        print(batcher.sent.text(f" to {args.metric} on {args.target}"))
    return 0
