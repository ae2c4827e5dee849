"""Write-ahead log of ingested batches: an acknowledged batch survives a kill.

Layout: a directory of segment files ``wal-<n>.log`` and a ``checkpoint`` file.

* Each accepted Ingest message is appended as one record ``[u32 length][u32 crc32][u64
  batch time ns][IngestRequest bytes]`` (the batch time: its ``time``, else when it was
  received; each of its values is at most the windows' future bound past it) *before*
  it is applied to the windows. The crc32 covers the length, the batch time and the
  bytes (:func:`_record_crc`); a record whose crc32 covers its bytes only (as logs
  written before the header was covered have them) is read too. Records wait in memory
  (written out past :data:`WRITE_PAST_BYTES`); :meth:`WriteAheadLog.sync` writes them
  and ``fsync``\\ s, and the node calls it before it acknowledges anything (the end of
  an Ingest stream, or the error that reports how many of the stream's messages were
  applied).
* A write that fails (a full disk) leaves the segment ending in what was written, and the
  rest waits; an ``fsync`` that fails cuts the segment back to what the last one made
  durable, and what was written since waits again (it is kept in memory, up to
  :data:`KEEP_UNSYNCED_BYTES`). Every sync fails until a write and ``fsync`` of all of it
  succeed: nothing is acknowledged that is not in the log, and a batch whose id the node
  knows (a retry is a duplicate) is in the log once a sync succeeds. Where that cannot be
  (an ``fsync`` failed with more written since the last than is kept, or the segment could
  not be cut back) the log stays failed: every sync fails until the node restarts.
* One log uses a directory at a time: it holds an exclusive ``flock`` on the file ``lock``
  there (with its pid) while open; another process (or another log in this one) that opens
  it fails with :class:`LogInUseError`. The kernel lets go of a process's lock when it ends.
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
  the checkpoint in order; a torn record at the end of the last segment (a kill mid-write),
  or zero bytes where a record should begin (a preallocated or cut-short tail: no record
  is empty), ends the replay of that segment. A node on a durable store reads them twice:
  at once for their batch ids (before it takes any batch), and again, once the store said
  which segments it holds, to apply those it does not (see
  :meth:`region_node.node.RegionNode.hold_wal`); on a store that keeps no windows, once,
  applying each batch as it is read.
* A node whose time-series store keeps nothing across a restart (the embedded in-memory
  default) never checkpoints: the log is the only copy of its windows' data. It rotates
  the log now and then instead, and deletes a closed segment once every batch in it is
  past the windows' retention (:meth:`WriteAheadLog.drop_older_than`), by the
  newest batch time of each segment's records (known for the segments appended to or
  read to their end since the log was opened).

Batch ids (``IngestRequest.batch_id``) make retries exactly-once: the node remembers the
ids it applied (bounded), across restarts through the log and the checkpoint. The
checkpoint's ids are those known when it is written, so they may name batches of the
segments after it (taken while the flush ran): a replay applies every batch those
segments hold, whatever ids are known.

A checkpoint writes only the ids added since the last one (its cost does not grow with
the ids remembered): they are appended to the batch ids journal ``batch-ids-<n>.journal``
(one JSON string a line) and fsynced before the checkpoint, which names the journal and
how many of its bytes it covers (and the new ids again). On start the covered bytes are
read and anything after them (an append whose checkpoint a kill prevented: those batches
are in the segments it did not delete) is cut off; journals no checkpoint names are
deleted. Once the journal holds :data:`JOURNAL_COMPACT_FACTOR` times the ids remembered,
a checkpoint writes a new one holding only those and names it instead. A checkpoint of
an older version (every remembered id in ``batch_ids``, no journal) is read too.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import struct
import threading
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from io import FileIO
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import BinaryIO, Final

from region_node.durable_files import fsync_dir, write_durably

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<IIQ")
#: The header's fields a record's crc32 covers (before its bytes): length, batch time
_COVERED: Final = struct.Struct("<IQ")


def _record_crc(length: int, time_ns: int, payload: bytes) -> int:
    """A record's crc32: of its length and batch time, then its bytes (a flipped bit in
    the batch time would otherwise put the batch's values in other windows, or let the
    log drop its segment too early)."""
    return zlib.crc32(payload, zlib.crc32(_COVERED.pack(length, time_ns)))


def _accepted_crcs(length: int, time_ns: int, payload: bytes) -> tuple[int, int]:
    """The crc32s a sound record may carry: :func:`_record_crc`, or, as records written
    before the header was covered carry, that of the bytes alone."""
    return _record_crc(length, time_ns, payload), zlib.crc32(payload)


_SEGMENT_PREFIX: Final = "wal-"
_SEGMENT_SUFFIX: Final = ".log"
_LOCK_FILE: Final = "lock"
_IOV_MAX: Final = 1024  # buffers one writev takes (Linux)
MAX_RECORD_BYTES: Final = 256 * 1024 * 1024
DEFAULT_REMEMBERED_BATCHES: Final = 1_000_000
#: Appended records are written out (not fsynced) once this many bytes of them wait.
WRITE_PAST_BYTES: Final = 1 << 20
#: What was written since the last fsync is kept, to be written again should the next
#: fsync fail, up to this many bytes (a longer Ingest stream's log is not all in memory).
KEEP_UNSYNCED_BYTES: Final = 64 << 20
#: While writes fail, appends are refused once this many bytes wait to be written.
MAX_UNWRITTEN_BYTES: Final = 64 << 20
#: The batch ids journal is rewritten with the remembered ids only once it holds more
#: than this many times as many ids as are remembered.
JOURNAL_COMPACT_FACTOR: Final = 2
_JOURNAL_PREFIX: Final = "batch-ids-"
_JOURNAL_SUFFIX: Final = ".journal"


class LogInUseError(OSError):
    """The log's directory is held by another open log."""


class BatchIds:
    """The most recent ``limit`` batch ids applied, oldest forgotten first.

    With ``track_new`` it also keeps the ids added since :meth:`take_new` last took them
    (at most ``limit`` of them; past that it only notes that some were missed), for a
    log's checkpoint to journal only those. Safe to add to from one thread while another
    takes them."""

    def __init__(self, limit: int = DEFAULT_REMEMBERED_BATCHES, *, track_new: bool = False) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._track_new = track_new
        self._new: list[str] = []
        self._missed_new = False

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, batch_id: str) -> None:
        with self._lock:
            if batch_id in self._ids:
                return
            self._ids[batch_id] = None
            if len(self._ids) > self.limit:
                self._ids.popitem(last=False)
            if self._track_new:
                self._new.append(batch_id)
                if len(self._new) > self.limit:
                    self._new.clear()
                    self._missed_new = True

    def restore(self, batch_ids: Iterable[str]) -> None:
        """Remember ``batch_ids`` (read back from a checkpoint) without counting them new."""
        with self._lock:
            ids = self._ids
            for batch_id in batch_ids:
                if batch_id not in ids:
                    ids[batch_id] = None
                    if len(ids) > self.limit:
                        ids.popitem(last=False)

    def take_new(self) -> tuple[list[str], bool]:
        """The ids added since the last take (oldest first), and whether some of them were
        not kept (more than ``limit``): then only :meth:`recent` has them all."""
        with self._lock:
            new, missed = self._new, self._missed_new
            self._new, self._missed_new = [], False
            return new, missed

    def give_back(self, new: list[str], missed: bool) -> None:
        """Put back what :meth:`take_new` took (a checkpoint that failed), ahead of the
        ids added since."""
        with self._lock:
            self._new[:0] = new
            self._missed_new = self._missed_new or missed
            if len(self._new) > self.limit:
                self._new.clear()
                self._missed_new = True

    def recent(self) -> list[str]:
        with self._lock:
            return list(self._ids)


def _segment_number(path: Path) -> int | None:
    name = path.name
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _lock_directory(directory: Path) -> BinaryIO:
    """The open ``lock`` file of ``directory``, exclusively ``flock``\\ ed (until it is
    closed, or the process ends) and holding this process's pid; :class:`LogInUseError`
    naming the holder's pid when another open file holds it."""
    f = open(directory / _LOCK_FILE, "a+b")  # noqa: SIM115
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read(32).decode("ascii", "replace").strip()
        f.close()
        pid = holder if holder.isdigit() else "unknown"
        raise LogInUseError(
            f"WAL directory {directory} is in use by another process (pid {pid})"
        ) from None
    except BaseException:
        f.close()
        raise
    with contextlib.suppress(OSError):  # the pid only names the holder to others
        f.truncate(0)
        f.write(f"{os.getpid()}\n".encode())
        f.flush()
    return f


class WriteAheadLog:
    """One node's log (see the module docstring). Not thread-safe: one event loop."""

    def __init__(self, directory: Path, remembered_batches: int = DEFAULT_REMEMBERED_BATCHES):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_directory(directory)
        try:
            self.batch_ids = BatchIds(remembered_batches, track_new=True)
            # the batch ids journal the checkpoint names (None: none yet), the bytes of it
            # the checkpoint covers, and how many ids those hold
            self._journal: str | None = None
            self._journal_bytes = 0
            self._journal_ids = 0
            #: this log's identity: segment numbers mean something only within one log
            self.id = self._log_id()
            self._checkpointed = -1
            self._load_checkpoint()
            existing = self._segments()
        except BaseException:
            self._lock_file.close()
            raise
        self._current = max([n for n, _ in existing] + [self._checkpointed]) + 1
        self._file: FileIO | None = None
        # a sync runs in a worker thread while the event loop may rotate or close the
        # segment: syncs, rotations and closes take turns (the file is not closed under
        # an fsync)
        self._file_lock = threading.RLock()
        # the segment's writes and the byte counts and buffers below; never held across
        # an fsync (the event loop's appends do not wait for one)
        self._io_lock = threading.Lock()
        # appended records not yet written: their headers and payloads (not copied)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # what was written since the last fsync from segment byte _kept_from (all of it
        # while _kept_from == _durable: at most KEEP_UNSYNCED_BYTES), by write: (the
        # segment byte it ends at, its buffers)
        self._unsynced: deque[tuple[int, list[bytes]]] = deque()
        self._unsynced_bytes = 0
        self._kept_from = 0
        self._written = 0  # bytes written to the current segment
        self._durable = 0  # of which an fsync made durable
        # why every sync fails from now on (records taken are lost), once it is so
        self._broken: str | None = None
        self._failing = False  # the last write or fsync failed
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
        write_durably(path, made)
        return made

    def _load_checkpoint(self) -> None:
        path = self.directory / "checkpoint"
        data = json.loads(path.read_text()) if path.exists() else None
        if data is not None:
            self._checkpointed = int(data["segment"])
            journal = data.get("journal")
            if journal is not None:
                self._read_journal(str(journal), int(data["journal_bytes"]))
            # the ids this checkpoint added (in its journal too), or, as checkpoints
            # written before the journal have them, every id remembered
            self.batch_ids.restore(str(batch_id) for batch_id in data.get("batch_ids", []))
        for stale in self.directory.iterdir():  # journals no checkpoint names (a kill)
            name = stale.name
            if name.startswith(_JOURNAL_PREFIX) and name != self._journal:
                stale.unlink(missing_ok=True)

    def _read_journal(self, name: str, covered: int) -> None:
        """Remember the ids of the first ``covered`` bytes of journal ``name`` (one JSON
        string a line), and cut off what follows them (a checkpoint that did not happen)."""
        with open(self.directory / name, "r+b") as f:
            data = f.read(covered)
            if len(data) < covered:
                raise OSError(
                    f"the batch ids journal {self.directory / name} holds {len(data)} bytes, "
                    f"its checkpoint covers {covered}"
                )
            if f.read(1):
                f.truncate(covered)
                os.fsync(f.fileno())
        lines = data.decode("ascii", "replace").split("\n")
        if lines.pop():  # cannot be (the checkpoint covers whole lines): skipped
            log.warning("WAL %s: the batch ids journal ends in a torn line", self.directory)
        ids = []
        for line in lines:
            if "\\" not in line and len(line) >= 2 and line[0] == line[-1] == '"':
                ids.append(line[1:-1])  # no escapes: the JSON string's characters
                continue
            try:
                ids.append(str(json.loads(line)))
            except ValueError:
                log.warning("WAL %s: a corrupt line in the batch ids journal", self.directory)
        self.batch_ids.restore(ids)
        self._journal, self._journal_bytes, self._journal_ids = name, covered, len(ids)

    def _open_current(self) -> FileIO:
        """The current segment, opened (for appends) if it is not (holding _io_lock)."""
        if self._file is not None:
            return self._file
        if self._lock_file.closed:
            raise ValueError(f"the write-ahead log {self.directory} is closed")
        f = open(self._segment_path(self._current), "ab", buffering=0)  # noqa: SIM115
        try:
            fsync_dir(self.directory)
        except BaseException:
            f.close()
            raise
        self._file = f
        self._written = self._durable = self._kept_from = os.fstat(f.fileno()).st_size
        return f

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
            newest = -1  # a segment holding no record (a kill before its first write)
            for time_ns, payload in self._read_segment(path):
                newest = max(newest, time_ns)
                yield n, time_ns, payload
            # read to its end: the newest of its records is known (not before: a reader
            # that stops early saw only some of them)
            self._received(n, newest)

    def _read_segment(self, path: Path) -> Iterator[tuple[int, bytes]]:
        # record by record, not the whole segment at once: a segment may be far larger
        # than the memory a node should spend on its replay
        with path.open("rb") as f:
            pos = 0
            while True:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    if header:
                        log.warning("WAL %s: %d trailing bytes of a torn record", path, len(header))
                    return
                length, crc, time_ns = _HEADER.unpack(header)
                if length == 0:  # no record is empty: zeros (a preallocated or cut-short tail)
                    log.warning("WAL %s: zero bytes from byte %d; replay stops", path, pos)
                    return
                payload = f.read(length) if length <= MAX_RECORD_BYTES else b""
                if len(payload) < length or crc not in _accepted_crcs(length, time_ns, payload):
                    log.warning(
                        "WAL %s: torn or corrupt record at byte %d; replay stops", path, pos
                    )
                    return
                yield time_ns, payload
                pos += _HEADER.size + length

    def append(self, payload: bytes, time_ns: int) -> None:
        """Take one record (durable after the next :meth:`sync` that succeeds). Raises,
        taking nothing, when the log failed for good or too much waits for a failing disk;
        otherwise a failed write is the next sync's to report."""
        if not payload or len(payload) > MAX_RECORD_BYTES:
            raise ValueError(
                f"a write-ahead log record holds 1 to {MAX_RECORD_BYTES} bytes, not {len(payload)}"
            )
        with self._io_lock:
            if self._broken is not None:
                raise OSError(self._broken)
            if self._file is None:
                self._open_current()
            if self._pending_bytes >= WRITE_PAST_BYTES:
                try:
                    self._write_out()
                except OSError:
                    if self._pending_bytes >= MAX_UNWRITTEN_BYTES:
                        raise
            crc = _record_crc(len(payload), time_ns, payload)
            self._pending += (_HEADER.pack(len(payload), crc, time_ns), payload)
            self._pending_bytes += _HEADER.size + len(payload)
            self.appended += 1
        self._received(self._current, time_ns)

    def _write_out(self) -> None:
        """Write the pending records (holding _io_lock). When a write fails the segment
        ends in what was written (a write that fails writes nothing), the rest waits."""
        assert self._file is not None  # records wait only in an open segment
        fd, pending = self._file.fileno(), self._pending
        while pending:
            group = pending[:_IOV_MAX]
            try:
                done = os.writev(fd, group)
            except OSError as exc:
                self._failed(exc)
                raise
            if done < sum(map(len, group)):  # cut short: the buffers it wrote, and part of one
                whole = 0
                while done >= len(group[whole]):
                    done -= len(group[whole])
                    whole += 1
                if done:
                    pending[whole] = group[whole][done:]
                    group = [*group[:whole], group[whole][:done]]
                else:
                    group = group[:whole]
            else:
                whole = len(group)
            del pending[:whole]
            self._wrote(group)

    def _wrote(self, buffers: list[bytes]) -> None:
        """``buffers`` were written (holding _io_lock): kept until an fsync covers them,
        while what is kept stays within KEEP_UNSYNCED_BYTES."""
        size = sum(map(len, buffers))
        self._pending_bytes -= size
        self._written += size
        self._unsynced.append((self._written, buffers))
        self._unsynced_bytes += size
        if self._unsynced_bytes > KEEP_UNSYNCED_BYTES:
            self._unsynced.clear()
            self._unsynced_bytes = 0
            self._kept_from = self._written

    def _received(self, segment: int, time_ns: int) -> None:
        known = self._newest.get(segment)
        if known is None or time_ns > known:
            self._newest[segment] = time_ns

    @property
    def current_is_empty(self) -> bool:
        """No record was appended to the current segment yet."""
        return self._file is None

    def sync(self) -> None:
        """Make every appended record durable (write + fsync), or raise ``OSError``: then
        they wait for the next sync (see the module docstring). Safe to call from a worker
        thread while the owner appends, rotates or closes."""
        with self._file_lock:
            with self._io_lock:
                if self._broken is not None:
                    raise OSError(self._broken)
                target = self.appended
                if self._pending:
                    self._write_out()
                f, upto = self._file, self._written
            if f is not None and upto > self._durable:
                try:
                    os.fsync(f.fileno())
                except OSError as exc:
                    with self._io_lock:
                        self._fsync_failed(f, exc)
                    raise
                with self._io_lock:
                    self._synced_through(upto)
            self.synced = max(self.synced, target)
            if self._failing:
                self._failing = False
                log.warning("WAL %s: writes succeed again; every record is durable", self.directory)

    def _synced_through(self, upto: int) -> None:
        """An fsync made the segment's bytes up to ``upto`` durable (holding _io_lock): what
        was kept of them is let go."""
        self._durable = upto
        if self._kept_from >= upto:
            return
        while self._unsynced and self._unsynced[0][0] <= upto:  # upto ends a write
            end, _ = self._unsynced.popleft()
            self._unsynced_bytes -= end - self._kept_from
            self._kept_from = end

    def _fsync_failed(self, f: FileIO, exc: OSError) -> None:
        """An fsync failed: what was written since the last may not be on the disk
        (holding _io_lock). The segment is cut back to what is durable, and what was
        written since waits to be written again, ahead of what was appended meanwhile;
        if not all of it is kept, or the cut fails, the log fails for good."""
        if self._kept_from == self._durable:
            try:
                os.ftruncate(f.fileno(), self._durable)
            except OSError as cut:
                self._break(
                    f"an fsync failed ({exc.strerror or exc}) and the segment could not be "
                    f"cut back ({cut.strerror or cut})"
                )
                return
            self._pending[:0] = itertools.chain.from_iterable(b for _, b in self._unsynced)
            self._pending_bytes += self._unsynced_bytes
            self._unsynced.clear()
            self._unsynced_bytes = 0
            self._written = self._kept_from = self._durable
            self._failed(exc)
        else:
            self._break(
                f"an fsync failed ({exc.strerror or exc}) with more written since the last "
                f"one than the log keeps ({KEEP_UNSYNCED_BYTES} bytes)"
            )

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "WAL %s: writing failed (%s); records wait, and every sync fails until "
                "they are written",
                self.directory,
                exc.strerror or exc,
            )

    def _break(self, why: str) -> None:
        self._broken = (
            f"the write-ahead log {self.directory} lost records it had taken: {why}; "
            "restart the node"
        )
        log.error("%s", self._broken)

    # -- checkpoints --------------------------------------------------------------

    def rotate(self) -> int:
        """Start a new segment; returns the number of the last closed one (after a sync
        running in another thread has finished with it)."""
        with self._file_lock:
            self.sync()
            with self._io_lock:
                f, self._file = self._file, None
                closed = self._current
                self._current += 1
            if f is not None:
                f.close()
        return closed

    def checkpoint(self, upto: int, batch_ids: Iterable[str] | None = None) -> int:
        """Segments ``<= upto`` are in the store: record it durably, then delete them.

        The batch ids remembered go to the journal the checkpoint names: those added since
        the last checkpoint are appended to it (and named in the checkpoint too), and once
        it holds :data:`JOURNAL_COMPACT_FACTOR` times the ids remembered it is replaced by
        one holding only those. ``batch_ids``, if given, replaces every id the log's
        checkpoint names."""
        if batch_ids is not None:
            new, missed, full = list(batch_ids), False, True
        else:
            new, missed = self.batch_ids.take_new()
            full = (
                missed
                or self._journal is None
                or self._journal_ids + len(new) > JOURNAL_COMPACT_FACTOR * self.batch_ids.limit
            )
        try:
            # taken before the sync (a batch's id is added after its record is appended):
            # every id it names must be in the log first: one taken since the last sync is
            # in a record still in memory, which a kill would lose while the checkpoint kept
            # its id (the batch's retry would then be taken for a duplicate, and the batch lost)
            journaled = new if batch_ids is not None else self.batch_ids.recent() if full else []
            self.sync()
            # the ids are durable in the journal before the checkpoint that covers them
            if full:
                journal, size, count = self._write_journal(journaled)
                named = [] if batch_ids is not None else new
            else:
                journal, size, count = self._append_journal(new)
                named = new
            write_durably(
                self.directory / "checkpoint",
                json.dumps(
                    {"segment": upto, "journal": journal, "journal_bytes": size, "batch_ids": named}
                ),
            )
        except BaseException:
            if batch_ids is None:
                self.batch_ids.give_back(new, missed)
            raise
        old, self._journal = self._journal, journal
        self._journal_bytes, self._journal_ids = size, count
        if old is not None and old != journal:
            (self.directory / old).unlink(missing_ok=True)
        self._checkpointed = upto
        removed = 0
        for n, path in self._segments():
            if n <= upto:
                path.unlink(missing_ok=True)
                self._newest.pop(n, None)
                removed += 1
        return removed

    @staticmethod
    def _journal_lines(batch_ids: list[str]) -> bytes:
        if not batch_ids:
            return b""
        return ("\n".join(map(encode_basestring_ascii, batch_ids)) + "\n").encode("ascii")

    def _write_journal(self, batch_ids: list[str]) -> tuple[str, int, int]:
        """A new journal holding ``batch_ids``, durable: (its name, bytes, ids)."""
        number = 0
        if self._journal is not None:
            number = int(self._journal[len(_JOURNAL_PREFIX) : -len(_JOURNAL_SUFFIX)]) + 1
        name = f"{_JOURNAL_PREFIX}{number:012d}{_JOURNAL_SUFFIX}"
        data = self._journal_lines(batch_ids)
        path = self.directory / name
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.directory)
        return name, len(data), len(batch_ids)

    def _append_journal(self, batch_ids: list[str]) -> tuple[str, int, int]:
        """``batch_ids`` appended to the journal, durable: (its name, bytes, ids). What
        follows the bytes the checkpoint covers (an append whose checkpoint failed) is
        cut off first: the journal holds whole lines."""
        assert self._journal is not None
        data = self._journal_lines(batch_ids)
        fd = os.open(self.directory / self._journal, os.O_WRONLY)
        try:
            os.ftruncate(fd, self._journal_bytes)
            view, at = memoryview(data), self._journal_bytes
            while view:
                done = os.pwrite(fd, view, at)
                view, at = view[done:], at + done
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._journal, self._journal_bytes + len(data), self._journal_ids + len(batch_ids)

    def drop_older_than(self, cutoff_ns: int) -> int:
        """Delete the closed segments all of whose records' batch times are before
        ``cutoff_ns``; returns how many. Only for a log no checkpoint covers (see the
        module docstring): their batches are then in no store. A segment whose records'
        times are unknown (neither appended to nor read to its end since the log was
        opened) stays; one read to its end that holds no record goes."""
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
        """Sync, close, and let go of the directory (for another log to open)."""
        with self._file_lock:
            try:
                self.sync()
            finally:
                with self._io_lock:
                    f, self._file = self._file, None
                if f is not None:
                    f.close()
                self._lock_file.close()
