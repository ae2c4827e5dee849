"""The write-ahead log: records round-trip, torn tails stop replay, checkpoints cover segments."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from region_node import wal as wal_module
from region_node.wal import BatchIds, WriteAheadLog


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    for i in range(5):
        wal.append(f"payload-{i}".encode(), 1000 + i)
    wal.sync()
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert list(again.replay()) == [(1000 + i, f"payload-{i}".encode()) for i in range(5)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=10), st.integers(1, 40))
def test_a_torn_tail_loses_only_the_torn_record(
    tmp_path_factory: object, payloads: list[bytes], cut: int
) -> None:
    directory = Path(tmp_path_factory.mktemp("wal"))  # type: ignore[attr-defined]
    wal = WriteAheadLog(directory)
    for i, p in enumerate(payloads):
        wal.append(p, i)
    wal.close()
    (segment,) = sorted(directory.glob("wal-*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[: max(0, len(data) - cut)])
    replayed = [p for _, p in WriteAheadLog(directory).replay()]
    # exactly the records that end before the cut come back
    kept_bytes = max(0, len(data) - cut)
    ends = np.cumsum([16 + len(p) for p in payloads])
    assert replayed == payloads[: int(np.sum(ends <= kept_bytes))]


def test_checkpoint_covers_closed_segments_and_keeps_batch_ids(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"a", 1)
    wal.batch_ids.add("id-a")
    closed = wal.rotate()
    wal.append(b"b", 2)
    wal.checkpoint(closed)
    wal.close()
    assert len(list(tmp_path.glob("wal-*.log"))) == 1
    again = WriteAheadLog(tmp_path)
    assert [p for _, p in again.replay()] == [b"b"]
    assert "id-a" in again.batch_ids


def test_batch_ids_forget_the_oldest_past_the_limit() -> None:
    ids = BatchIds(limit=3)
    for i in range(5):
        ids.add(f"b{i}")
    assert "b0" not in ids and "b1" not in ids
    assert all(f"b{i}" in ids for i in (2, 3, 4))
    assert len(ids) == 3


def test_segments_whose_batches_are_all_older_than_a_cutoff_are_dropped_whole(
    tmp_path: Path,
) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"a", 100)
    wal.append(b"b", 300)  # segment 0: newest 300
    wal.rotate()
    wal.append(b"c", 200)  # segment 1: newest 200
    wal.rotate()
    wal.append(b"d", 1_000)  # the current segment
    wal.sync()
    assert wal.drop_older_than(250) == 1  # segment 1 only: segment 0 holds 300
    assert list(wal.replay()) == [(100, b"a"), (300, b"b"), (1_000, b"d")]
    assert wal.drop_older_than(10_000) == 1  # segment 0; the current one stays
    assert list(wal.replay()) == [(1_000, b"d")]
    wal.close()

    reopened = WriteAheadLog(tmp_path)
    assert reopened.current_is_empty
    # times not read since the log was opened are unknown: nothing is dropped on a guess
    assert reopened.drop_older_than(10_000) == 0
    assert list(reopened.replay()) == [(1_000, b"d")]  # reading them learns them
    assert reopened.drop_older_than(10_000) == 1
    assert list(reopened.replay()) == []
    reopened.close()


def test_a_checkpoint_forgets_the_times_of_the_segments_it_deletes(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"a", 100)
    closed = wal.rotate()
    assert wal.current_is_empty
    wal.append(b"b", 200)
    assert not wal.current_is_empty
    wal.checkpoint(closed)
    wal.rotate()
    assert wal.drop_older_than(10_000) == 1  # the segment of b only
    assert list(wal.replay()) == []
    wal.close()


def test_the_log_describes_where_it_is_and_what_it_holds(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    assert wal.describe() == f"{tmp_path}: 0 segments, 0.0 MiB"
    wal.append(b"x" * (3 * 2**20), 1)
    wal.rotate()
    assert wal.describe() == f"{tmp_path}: 1 segment, 3.0 MiB"
    wal.append(b"y" * 2**19, 2)
    wal.sync()
    assert wal.describe() == f"{tmp_path}: 2 segments, 3.5 MiB"
    wal.close()


def test_a_rotation_waits_for_a_sync_in_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node syncs in a worker thread while its event loop may rotate the log: the
    rotation must not close the segment under the sync's fsync (which then failed, and
    an Ingest whose batches were applied and durable answered INTERNAL)."""
    wal = WriteAheadLog(tmp_path)
    wal.append(b"applied", 1)
    in_fsync, go_on = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if threading.current_thread().name == "syncer":
            in_fsync.set()
            go_on.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(wal_module.os, "fsync", slow_fsync)
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            wal.sync()
        except BaseException as exc:
            errors.append(exc)

    syncer = threading.Thread(target=sync, name="syncer")
    syncer.start()
    assert in_fsync.wait(10)
    rotator = threading.Thread(target=wal.rotate, name="rotator")
    rotator.start()
    rotator.join(0.3)
    assert rotator.is_alive()  # waiting for the sync, not closing the file under it
    go_on.set()
    syncer.join(10)
    rotator.join(10)
    assert not errors and wal.synced == wal.appended == 1
    assert wal.current_segment == 1
    wal.close()
    assert list(WriteAheadLog(tmp_path).replay()) == [(1, b"applied")]


def test_a_failed_fsync_keeps_its_records_for_the_next_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the fsync fails with part of a record on the disk. The segment is cut
    back to what the last fsync made durable, and the records written since wait for the
    next sync, which writes them ahead of those appended meanwhile."""
    wal = WriteAheadLog(tmp_path)
    wal.append(b"first", 1)
    wal.sync()
    wal.append(b"not durable", 2)
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        size = os.fstat(fd).st_size
        os.ftruncate(fd, size - 4)  # the record's last bytes never reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_module.os, "fsync", disk_full)
    with pytest.raises(OSError):
        wal.sync()
    monkeypatch.setattr(wal_module.os, "fsync", real_fsync)
    wal.append(b"after", 3)
    wal.sync()
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert list(again.replay_segments()) == [
        (0, 1, b"first"),
        (0, 2, b"not durable"),
        (0, 3, b"after"),
    ]
    again.close()


def test_a_zero_filled_tail_ends_the_replay(tmp_path: Path) -> None:
    """A segment ending in zero bytes (preallocated, or a crash left the file longer than
    what was written): the zeros are no records, not empty ones."""
    wal = WriteAheadLog(tmp_path)
    for i in range(3):
        wal.append(f"record-{i}".encode(), 10 + i)
    wal.close()
    (segment,) = tmp_path.glob("wal-*.log")
    with open(segment, "ab") as f:
        f.write(bytes(4096 + 5))
    assert list(WriteAheadLog(tmp_path).replay()) == [
        (10 + i, f"record-{i}".encode()) for i in range(3)
    ]


def test_an_empty_record_is_refused(tmp_path: Path) -> None:
    """A record of no bytes would read as the end of the segment (as zeros do)."""
    wal = WriteAheadLog(tmp_path)
    with pytest.raises(ValueError, match=r"holds 1 to .* bytes, not 0$"):
        wal.append(b"", 1)
    wal.append(b"kept", 2)
    wal.close()
    assert list(WriteAheadLog(tmp_path).replay()) == [(2, b"kept")]


def test_a_directory_another_log_holds_is_refused_until_it_closes(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"a", 1)
    in_use = f"WAL directory {tmp_path} is in use by another process (pid {os.getpid()})"
    with pytest.raises(OSError, match=f"^{re.escape(in_use)}$"):
        WriteAheadLog(tmp_path)
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert list(again.replay()) == [(1, b"a")]
    again.close()


_HOLD_LOG = """
import sys
from pathlib import Path
from region_node.wal import WriteAheadLog
wal = WriteAheadLog(Path(sys.argv[1]))
print("open", flush=True)
sys.stdin.read()
wal.close()
"""


@pytest.mark.parametrize("ends", ["closes", "is killed"])
def test_a_directory_another_process_holds_is_refused_until_it_ends(
    tmp_path: Path, ends: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOG, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        in_use = f"WAL directory {tmp_path} is in use by another process (pid {holder.pid})"
        with pytest.raises(OSError, match=f"^{re.escape(in_use)}$"):
            WriteAheadLog(tmp_path)
        if ends == "closes":
            holder.communicate(b"", timeout=30)
        else:  # the kernel lets go of a dead process's lock: nothing stale is left
            holder.kill()
            holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
    WriteAheadLog(tmp_path).close()


def test_a_replay_holds_one_record_at_a_time_not_the_whole_segment(tmp_path: Path) -> None:
    """A segment can be far larger than memory a node should spend on its replay: it is
    read record by record, so the peak while replaying is about one record, not the
    segment."""
    import tracemalloc

    record = bytes(range(256)) * 4096  # 1 MiB
    wal = WriteAheadLog(tmp_path)
    for i in range(24):
        wal.append(record, i)
    wal.close()
    again = WriteAheadLog(tmp_path)
    tracemalloc.start()
    try:
        count = 0
        for time_ns, payload in again.replay():
            assert (time_ns, payload) == (count, record)
            count += 1
            del payload
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        again.close()
    assert count == 24
    assert peak < 4 * len(record), f"replay peaked at {peak} bytes for a 24 MiB segment"


def test_a_record_whose_batch_time_was_corrupted_ends_the_replay(tmp_path: Path) -> None:
    """The crc32 covers the header's batch time: a flipped bit there is a corrupt record
    (its values would land in other windows), not a record of another time."""
    wal = WriteAheadLog(tmp_path)
    wal.append(b"first", 1_000)
    wal.append(b"second", 2_000)
    wal.close()
    (segment,) = tmp_path.glob("wal-*.log")
    data = bytearray(segment.read_bytes())
    second = wal_module._HEADER.size + len(b"first")
    data[second + 8] ^= 0x01  # the lowest byte of the second record's batch time
    segment.write_bytes(bytes(data))
    assert list(WriteAheadLog(tmp_path).replay()) == [(1_000, b"first")]


def test_records_whose_crc_covers_their_bytes_only_are_still_replayed(tmp_path: Path) -> None:
    """A log written before the header was covered replays after an upgrade."""
    import struct
    import zlib

    records = [(10, b"older"), (20, b"records")]
    (tmp_path / "wal-1.log").write_bytes(
        b"".join(struct.pack("<IIQ", len(p), zlib.crc32(p), t) + p for t, p in records)
    )
    wal = WriteAheadLog(tmp_path)
    assert list(wal.replay()) == records
    wal.close()
