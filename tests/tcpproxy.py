"""A TCP proxy for store-outage tests: the real server stays up (other work uses it) while
the proxy in front of it refuses connections or goes silent."""

from __future__ import annotations

import asyncio
import contextlib

#: How long after a request whose answer is lost the proxy cuts its connections.
LOSS_SETTLE_S = 0.2


class CuttableProxy:
    """A TCP proxy from a free local port to ``target``.

    :meth:`cut` aborts every connection and refuses new ones until :meth:`restore`.
    :meth:`stall` keeps every connection open but forwards nothing, either way, and accepts
    new connections without connecting them onwards (a hung server: TCP answers, PostgreSQL
    never does) until :meth:`resume`. :meth:`lose_replies_after` lets a request through and
    loses its answer: the server acts on it, the client sees its connection break.
    ``reply_delay_s`` holds back every answer that long (a slow link, a busy server).
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.cut_off = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.connections = 0
        self._lose_after: bytes | None = None
        self._replies_lost = False
        self.reply_delay_s = 0.0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._live.add(writer)
        try:
            await self._flowing.wait()
            if self.cut_off:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.connections += 1
            self._live.add(up_writer)
            pipes = [
                asyncio.ensure_future(self._pipe(reader, up_writer, to_server=True)),
                asyncio.ensure_future(self._pipe(up_reader, writer, to_server=False)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pipes:
                    task.cancel()
                self._live.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._live.discard(writer)
            writer.transport.abort()
            self._handlers.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await self._flowing.wait()  # stalled: nothing is read, so nothing moves
                data = await reader.read(65536)
                if not data:
                    return
                await self._flowing.wait()
                if self._replies_lost and not to_server:
                    continue
                if self.reply_delay_s and not to_server:
                    await asyncio.sleep(self.reply_delay_s)
                writer.write(data)
                await writer.drain()
                marker = self._lose_after
                if to_server and marker is not None and marker in data:
                    # the server has the request; its answer (and any other) goes nowhere,
                    # and once the server has surely read it, every connection breaks
                    self._lose_after = None
                    self._replies_lost = True
                    asyncio.get_running_loop().call_later(LOSS_SETTLE_S, self.cut)

    def cut(self) -> None:
        self.cut_off = True
        self._flowing.set()  # a stalled connection is cut too
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()

    def restore(self) -> None:
        self.cut_off = False
        self._replies_lost = False

    def lose_replies_after(self, marker: bytes) -> None:
        """Forward the next request that contains ``marker``, then lose every answer and,
        :data:`LOSS_SETTLE_S` later, cut (as :meth:`cut`) until :meth:`restore`."""
        self._lose_after = marker

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # the handlers end once they see their connections aborted
        await asyncio.gather(*self._handlers, return_exceptions=True)
