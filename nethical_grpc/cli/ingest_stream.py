"""``nethical-mesh ingest --stream``: values sent as they arrive, for input that stays
open (``tail -f metrics.log | nethical-mesh ingest latency_ms --stream``).

A reader thread hands the input's lines to the event loop. A batch goes once
``--batch-values`` values wait, ``--flush-after`` after the first of them arrived, and
at the end of the input; each batch is one Ingest call, acknowledged before the next is
sent, so what the node applied is known at every moment. A token that is not a number
stops the command (exit 2) naming its line, after the batches before it; Ctrl-C or
SIGTERM sends what waits and stops (exit 0).
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
from nethical_grpc.cli.client_commands import (
    open_channel,
    print_json,
    report_call_error,
    stop_on_signals,
)
from nethical_grpc.cli.observations import Observations, parse_observations
from nethical_grpc.cli.region_commands import applied_text, ingest_request
from nethical_grpc.cli.table import counted

#: the end of the input, as the reader thread hands it on
_END = None


@dataclass
class _Sent:
    batches: int = 0
    values: int = 0
    duplicates: int = 0

    def text(self, where: str = "") -> str:
        return applied_text(self.values, self.batches, self.duplicates, where)


def _open_input(source: str) -> TextIO:
    """``source`` opened for reading (``-``: stdin); ``OSError`` when it cannot be."""
    return sys.stdin if source == "-" else open(source, encoding="utf-8")


def _read_lines(
    stream: TextIO, loop: asyncio.AbstractEventLoop
) -> asyncio.Queue[str | Exception | None]:
    """The lines of ``stream``, handed on as a thread reads them; ``None`` after the last,
    or the error that ended the reading (a file that is not text, say)."""
    lines: asyncio.Queue[str | Exception | None] = asyncio.Queue()

    def read() -> None:
        end: Exception | None = _END
        try:
            for line in stream:
                loop.call_soon_threadsafe(lines.put_nowait, line)
        except (OSError, UnicodeDecodeError) as exc:
            end = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed first (a stop)
                loop.call_soon_threadsafe(lines.put_nowait, end)

    threading.Thread(target=read, name="ingest-input", daemon=True).start()
    return lines


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
        answer = await client.ingest(self.channel, [request], timeout=self.args.timeout)
        self.sent.batches += answer.accepted_batches
        self.sent.values += answer.accepted_values
        self.sent.duplicates += answer.duplicate_batches
        if self.args.json:
            print_json(answer, indent=None, always_print_fields_with_no_presence=True)
        else:
            state = "applied before, skipped" if answer.duplicate_batches else "applied"
            print(f"batch {n}: {counted(len(batch), 'value', 'values')} {state}", flush=True)


async def run_ingest_stream(args: argparse.Namespace) -> int:
    stop = stop_on_signals()
    try:
        # opened here: a file that cannot be read ends the command before anything is sent
        stream = _open_input(args.file)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = _read_lines(stream, asyncio.get_running_loop())
    flush_s = args.flush_after / 1e9
    status = 0
    async with open_channel(args) as channel:
        batcher = _Batcher(args, channel)
        stopped = asyncio.ensure_future(stop.wait())
        number = 0
        try:
            while True:
                due = None if batcher.first_at is None else batcher.first_at + flush_s
                wait = None if due is None else max(0.0, due - time.monotonic())
                line = asyncio.ensure_future(lines.get())
                done, _ = await asyncio.wait(
                    {line, stopped}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if line not in done:
                    line.cancel()
                    if stop.is_set():
                        break
                    await batcher.send_all()  # --flush-after since the oldest value
                    continue
                text = line.result()
                if text is _END:
                    break
                if isinstance(text, Exception):
                    print(f"error: {args.file}: {text}", file=sys.stderr)
                    status = 2
                    break
                number += 1
                try:
                    where = f"{args.file}, line {number}"
                    batcher.add(parse_observations(text, where, args.timed))
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    status = 2
                    break
                await batcher.send_full()
            await batcher.send_all()
        except grpc.RpcError as err:
            await report_call_error(args, channel, err)
            print(f"  before it: {batcher.sent.text()}", file=sys.stderr)
            return 1
        finally:
            stopped.cancel()
    if status:
        print(f"  before it: {batcher.sent.text()}", file=sys.stderr)
        return status
    if not args.json:
        print(batcher.sent.text(f" to {args.metric} on {args.target}"))
    return 0
