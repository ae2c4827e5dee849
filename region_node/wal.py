"""Write-ahead log of ingested batches: an acknowledged batch survives a kill.

Layout: a directory of segment files ``wal-<n>.log`` and a ``checkpoint`` file.

* Each accepted Ingest message is appended as one record ``[u32 length][u32 crc32][u64
  batch time ns][IngestRequest bytes]`` (the batch time: its ``time``, else when it was
  received; each of its values is at most the windows' future bound past it) *before*
  it is applied to the windows. Records are buffered; :meth:`WriteAheadLog.sync`
  flushes and ``fsync``\\ s, and the node calls it before it acknowledges anything (the
  end of an Ingest stream, or the error that reports how many of the stream's messages
  were applied).
* A checkpoint makes old segments unnecessary: the node rotates to a new segment, flushes
  every window changed so far to its time-series store, and then records "segments up to
  N are in the store" in ``checkpoint`` (written to a temporary file, fsynced and renamed)
  together with the batch ids seen recently, and deletes those segments. The flush also
  writes "segments up to N" with this log's id (``wal-id``) to the store, in the same
  transaction as the windows, so a kill between the flush and the checkpoint does not
  count those segments twice: on start the node replays only segments after both marks
  (earlier ones give their batch ids only). Segments are deleted only after the
  checkpoint that covers them is durable.
* On start, :meth:`WriteAheadLog.replay_segments` yields the records of the segments after
  the checkpoint in order; a torn record at the end of the last segment (a kill mid-write)
  ends the replay of that segment. A node on a durable store reads them twice: at once
  for their batch ids (before it takes any batch), and again, once the store said which
  segments it holds, to apply those it does not (see
  :meth:`region_node.node.RegionNode.hold_wal`); on a store that keeps no windows, once,
  applying each batch as it is read.
* A node whose time-series store keeps nothing across a restart (the embedded in-memory
  default) never checkpoints: the log is the only copy of its windows' data. It rotates
  the log now and then instead, and deletes a closed segment once every batch in it is
  past the windows' retention (:meth:`WriteAheadLog.drop_older_than`), by the
  newest batch time of each segment's records (known for the segments appended to or
  read since the log was opened).

Batch ids (``IngestRequest.batch_id``) make retries exactly-once: the node remembers the
ids it applied (bounded), across restarts through the log and the checkpoint. The
checkpoint's ids are those known when it is written, so they may name batches of the
segments after it (taken while the flush ran): a replay applies every batch those
segments hold, whatever ids are known.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<IIQ")
_SEGMENT_PREFIX: Final = "wal-"
_SEGMENT_SUFFIX: Final = ".log"
MAX_RECORD_BYTES: Final = 256 * 1024 * 1024
DEFAULT_REMEMBERED_BATCHES: Final = 1_000_000


class BatchIds:
    """The most recent ``limit`` batch ids applied, oldest forgotten first."""

    def __init__(self, limit: int = DEFAULT_REMEMBERED_BATCHES) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, batch_id: str) -> None:
        self._ids[batch_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def recent(self) -> list[str]:
        return list(self._ids)


def _segment_number(path: Path) -> int | None:
    name = path.name
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    """``path`` holds ``text`` after a crash, or its old content: written to a temporary
    file, fsynced, renamed over it, and the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


class WriteAheadLog:
    """One node's log (see the module docstring). Not thread-safe: one event loop."""

    def __init__(self, directory: Path, remembered_batches: int = DEFAULT_REMEMBERED_BATCHES):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.batch_ids = BatchIds(remembered_batches)
        #: this log's identity: segment numbers mean something only within one log
        self.id = self._log_id()
        self._checkpointed = -1
        self._load_checkpoint()
        existing = self._segments()
        self._current = max([n for n, _ in existing] + [self._checkpointed]) + 1
        self._file: BinaryIO | None = None
        # a sync runs in a worker thread while the event loop may rotate or close the
        # segment: the file must not be closed under its flush and fsync
        self._file_lock = threading.RLock()
        self.appended = 0
        self.synced = 0
        #: per segment, the newest batch time of its records appended or read so far
        self._newest: dict[int, int] = {}

    # -- files --------------------------------------------------------------------

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.iterdir():
            n = _segment_number(path)
            if n is not None:
                found.append((n, path))
        return sorted(found)

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"{_SEGMENT_PREFIX}{n:012d}{_SEGMENT_SUFFIX}"

    @staticmethod
    def peek_checkpointed(directory: Path) -> bool:
        """Whether the log in ``directory`` has a checkpoint (some logged batches are in
        the time-series store), without opening it."""
        return (Path(directory) / "checkpoint").exists()

    def _log_id(self) -> str:
        path = self.directory / "wal-id"
        if path.exists():
            return path.read_text().strip()
        made = uuid.uuid4().hex
        _write_durably(path, made)
        return made

    def _load_checkpoint(self) -> None:
        path = self.directory / "checkpoint"
        if not path.exists():
            return
        data = json.loads(path.read_text())
        self._checkpointed = int(data["segment"])
        for batch_id in data.get("batch_ids", []):
            self.batch_ids.add(str(batch_id))

    def _open_current(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self._segment_path(self._current), "ab")  # noqa: SIM115
            _fsync_dir(self.directory)
        return self._file

    # -- records ------------------------------------------------------------------

    @property
    def current_segment(self) -> int:
        """The segment appended to now (the next to be opened, before the first append)."""
        return self._current

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """(batch time ns, IngestRequest bytes) of every record after the checkpoint."""
        for _, time_ns, payload in self.replay_segments():
            yield time_ns, payload

    def replay_segments(
        self, after: int = -1, through: int | None = None
    ) -> Iterator[tuple[int, int, bytes]]:
        """(segment, batch time ns, IngestRequest bytes) of every record after the
        checkpoint, of the segments after ``after`` and up to ``through`` (if given)."""
        first = max(after, self._checkpointed)
        for n, path in self._segments():
            if n <= first or (through is not None and n > through):
                continue
            for time_ns, payload in self._read_segment(path):
                self._received(n, time_ns)
                yield n, time_ns, payload

    def _read_segment(self, path: Path) -> Iterator[tuple[int, bytes]]:
        data = path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc, time_ns = _HEADER.unpack_from(data, pos)
            start = pos + _HEADER.size
            payload = data[start : start + length]
            if length > MAX_RECORD_BYTES or len(payload) < length or zlib.crc32(payload) != crc:
                log.warning("WAL %s: torn or corrupt record at byte %d; replay stops", path, pos)
                return
            yield time_ns, payload
            pos = start + length
        if pos != len(data):
            log.warning("WAL %s: %d trailing bytes of a torn record", path, len(data) - pos)

    def append(self, payload: bytes, time_ns: int) -> None:
        """Buffer one record (durable after the next :meth:`sync`)."""
        f = self._open_current()
        try:  # a full buffer is written out here
            f.write(_HEADER.pack(len(payload), zlib.crc32(payload), time_ns))
            f.write(payload)
        except OSError:
            with self._file_lock:
                self._abandon_segment(f)
            raise
        self.appended += 1
        self._received(self._current, time_ns)

    def _received(self, segment: int, time_ns: int) -> None:
        if time_ns > self._newest.get(segment, -1):
            self._newest[segment] = time_ns

    @property
    def current_is_empty(self) -> bool:
        """No record was appended to the current segment yet."""
        return self._file is None

    def sync(self) -> None:
        """Make every appended record durable (flush + fsync). Safe to call from a worker
        thread while the owner appends, rotates or closes."""
        with self._file_lock:
            target = self.appended
            f = self._file
            if f is not None and self.synced < target:
                try:
                    f.flush()  # BufferedWriter serialises this with concurrent appends
                    os.fsync(f.fileno())
                except OSError:
                    self._abandon_segment(f)
                    raise
                self.synced = max(self.synced, target)

    def _abandon_segment(self, f: BinaryIO) -> None:
        """A write or fsync failed (a full disk, say): the segment may end in part of a
        record, where a replay stops. Records from now on go to the next segment, so a
        replay reads them (those that failed were never acknowledged as durable)."""
        log.error("WAL %s: a write failed; later records go to a new segment", self.directory)
        with contextlib.suppress(OSError):
            f.close()  # flushes what it can, then closes
        if self._file is f:
            self._file = None
            self._current += 1

    # -- checkpoints --------------------------------------------------------------

    def rotate(self) -> int:
        """Start a new segment; returns the number of the last closed one (after a sync
        running in another thread has finished with it)."""
        with self._file_lock:
            self.sync()
            if self._file is not None:
                self._file.close()
                self._file = None
            closed = self._current
            self._current += 1
        return closed

    def checkpoint(self, upto: int, batch_ids: Iterable[str] | None = None) -> int:
        """Segments ``<= upto`` are in the store: record it durably, then delete them."""
        ids = list(batch_ids if batch_ids is not None else self.batch_ids.recent())
        _write_durably(
            self.directory / "checkpoint", json.dumps({"segment": upto, "batch_ids": ids})
        )
        self._checkpointed = upto
        removed = 0
        for n, path in self._segments():
            if n <= upto:
                path.unlink(missing_ok=True)
                self._newest.pop(n, None)
                removed += 1
        return removed

    def drop_older_than(self, cutoff_ns: int) -> int:
        """Delete the closed segments all of whose records' batch times are before
        ``cutoff_ns``; returns how many. Only for a log no checkpoint covers (see the
        module docstring): their batches are then in no store. A segment whose records'
        times are unknown (neither appended to nor read since the log was opened) stays."""
        removed = 0
        for n, path in self._segments():
            newest = self._newest.get(n)
            if n < self._current and newest is not None and newest < cutoff_ns:
                path.unlink(missing_ok=True)
                del self._newest[n]
                removed += 1
        return removed

    def size(self) -> tuple[int, int]:
        """(segments, bytes) of the log on disk."""
        sizes = []
        for _, path in self._segments():
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                sizes.append(path.stat().st_size)
        return len(sizes), sum(sizes)

    def describe(self) -> str:
        """Where the log is and what it holds, e.g. ``/var/lib/wal: 3 segments, 12.5 MiB``."""
        segments, size = self.size()
        counted = f"{segments} segment" + ("" if segments == 1 else "s")
        return f"{self.directory}: {counted}, {size / 2**20:.1f} MiB"

    def close(self) -> None:
        with self._file_lock:
            self.sync()
            if self._file is not None:
                self._file.close()
            self._file = None
