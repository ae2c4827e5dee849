"""The write-ahead log on a disk that refuses a write: nothing is acknowledged that is not
in the log. The failing writes are real: the process's file size limit (``RLIMIT_FSIZE``,
with ``SIGXFSZ`` ignored) makes the kernel refuse every write past a byte of any file,
with ``EFBIG``, as a full disk refuses one with ``ENOSPC``."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from nethical_grpc import client
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node import wal as wal_module
from region_node.server import RegionServerConfig, start_region_server
from region_node.wal import WriteAheadLog

#: a first record this large puts the limit far past what anything else in the process
#: writes meanwhile (pytest's captured output, say)
BIG = 2**20


@contextlib.contextmanager
def disk_full_past(limit: int) -> Iterator[None]:
    """Writes past byte ``limit`` of any file of this process fail (``EFBIG``)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def segment_size(directory: Path) -> int:
    (segment,) = directory.glob("wal-*.log")
    return segment.stat().st_size


def replay_copy(directory: Path, copy: Path) -> list[tuple[int, bytes]]:
    """What a node that crashed now would replay: a copy of the log's files, read."""
    shutil.copytree(directory, copy)
    log = WriteAheadLog(copy)
    try:
        return list(log.replay())
    finally:
        log.close()


def test_records_a_failed_write_left_out_are_written_by_a_later_sync(tmp_path: Path) -> None:
    """While the disk refuses the write, every sync fails (none says records are durable
    that are not); once it takes writes again, a sync writes them all, in order."""
    directory = tmp_path / "wal"
    wal = WriteAheadLog(directory)
    wal.append(b"f" * BIG, 1)
    wal.sync()
    durable = segment_size(directory)
    with disk_full_past(durable + 20):  # part of the next record fits
        wal.append(b"refused" * 10, 2)
        with pytest.raises(OSError):
            wal.sync()
        wal.append(b"meanwhile", 3)
        with pytest.raises(OSError):
            wal.sync()
        with pytest.raises(OSError):
            wal.sync()
        # a crash now: the log holds what was durable, whole, and nothing after it
        assert replay_copy(directory, tmp_path / "crashed") == [(1, b"f" * BIG)]
    wal.sync()
    wal.append(b"after", 4)
    wal.close()
    again = WriteAheadLog(directory)
    assert list(again.replay()) == [
        (1, b"f" * BIG),
        (2, b"refused" * 10),
        (3, b"meanwhile"),
        (4, b"after"),
    ]
    again.close()


def test_a_failed_write_then_a_rotation_keeps_the_order(tmp_path: Path) -> None:
    """A rotation (a checkpoint's) syncs first: it fails while the disk refuses, and once
    it succeeds the closed segment holds every record appended to it."""
    wal = WriteAheadLog(tmp_path)
    wal.append(b"f" * BIG, 1)
    wal.sync()
    with disk_full_past(segment_size(tmp_path) + 20):
        wal.append(b"refused" * 10, 2)
        with pytest.raises(OSError):
            wal.rotate()
    assert wal.rotate() == 0
    wal.append(b"next segment", 3)
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert list(again.replay_segments()) == [
        (0, 1, b"f" * BIG),
        (0, 2, b"refused" * 10),
        (1, 3, b"next segment"),
    ]
    again.close()


def test_appends_are_refused_once_too_much_waits_for_a_failing_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records wait in memory while the disk refuses them, up to a bound: past it an
    append raises and takes nothing (the node refuses the batch, unapplied)."""
    monkeypatch.setattr(wal_module, "WRITE_PAST_BYTES", 100)
    monkeypatch.setattr(wal_module, "MAX_UNWRITTEN_BYTES", 1_000)
    wal = WriteAheadLog(tmp_path)
    wal.append(b"f" * BIG, 0)
    wal.sync()
    taken = []
    with disk_full_past(segment_size(tmp_path)):
        for i in range(1, 100):
            try:
                wal.append(b"r" * 84, i)  # 100 bytes a record
            except OSError:
                break
            taken.append(i)
        assert len(taken) == 10  # 1,000 bytes wait
        with pytest.raises(OSError):
            wal.sync()
    wal.append(b"after", 100)
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert [t for t, _ in again.replay()] == [0, *taken, 100]
    again.close()


def test_a_failed_fsync_with_more_written_than_kept_fails_the_log_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was written since the last fsync is kept up to a bound; an fsync that fails
    past it leaves records the log cannot write again: every sync (and append) fails from
    then on, saying so, rather than a later one succeeding without them."""
    monkeypatch.setattr(wal_module, "WRITE_PAST_BYTES", 100)
    monkeypatch.setattr(wal_module, "KEEP_UNSYNCED_BYTES", 300)
    wal = WriteAheadLog(tmp_path)
    for i in range(10):  # written out as they come, more than is kept
        wal.append(b"r" * 84, i)
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        wal.sync()
    monkeypatch.setattr(os, "fsync", real_fsync)
    lost = f"^the write-ahead log {re.escape(str(tmp_path))} lost records it had taken: "
    with pytest.raises(OSError, match=lost + ".*; restart the node$"):
        wal.sync()
    with pytest.raises(OSError, match=lost):
        wal.append(b"later", 11)
    with pytest.raises(OSError, match=lost):
        wal.close()
    WriteAheadLog(tmp_path).close()  # closed all the same: the directory is free


async def _total(channel: grpc.aio.Channel, metric: str) -> int:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
    answer = await stub.GetSummaries(
        region_node_pb2.GetSummariesRequest(metrics=[metric]), timeout=10
    )
    return sum(s.summary.moments.count for s in answer.series)


async def test_a_retry_of_a_batch_the_log_refused_is_acknowledged_only_once_logged(
    tmp_path: Path,
) -> None:
    """An Ingest whose log write fails answers an error; the client's retry of the batch
    is not acknowledged as a duplicate while the log still cannot write it (a crash
    then would lose it), and is once the log has it. A restart replays it once."""
    config = RegionServerConfig("r1", instance_id="r1-0", wal_dir=tmp_path, model=None)
    server, _ = await start_region_server(config)
    try:
        async with client.insecure_channel(server.address) as channel:
            first = client.encode_ingest_request("m", np.ones(BIG // 8), batch_id="b0")
            assert (await client.ingest(channel, [first])).accepted_batches == 1
            retried = client.encode_ingest_request("m", np.ones(10), batch_id="b1")
            with disk_full_past(segment_size(tmp_path) + 20):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await client.ingest(channel, [retried])
                assert failed.value.code() is grpc.StatusCode.INTERNAL
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await client.ingest(channel, [retried])  # the client's retry
                assert failed.value.code() is grpc.StatusCode.INTERNAL
            answer = await client.ingest(channel, [retried])
            assert (answer.accepted_batches, answer.duplicate_batches) == (0, 1)
            assert await _total(channel, "m") == BIG // 8 + 10
    finally:
        await server.drain(announce_s=0, grace_s=0)
    server, _ = await start_region_server(config)
    try:
        async with client.insecure_channel(server.address) as channel:
            assert await _total(channel, "m") == BIG // 8 + 10
    finally:
        await server.drain(announce_s=0, grace_s=0)
