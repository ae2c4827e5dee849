"""The write-ahead log's batch ids journal: a checkpoint writes only the ids added since
the last one, the journal is compacted to the remembered ids, and no acknowledged id is
lost to a torn line or a kill between the journal's append and the checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from nethical_grpc import client, convert
from nethical_grpc.series import IngestBatch
from nethical_grpc.v1 import region_node_pb2
from region_node import wal as wal_module
from region_node.node import NodeIdentity, RegionNode
from region_node.wal import WriteAheadLog


def _checkpoint(directory: Path) -> dict[str, object]:
    data = json.loads((directory / "checkpoint").read_text())
    assert isinstance(data, dict)
    return data


def _journals(directory: Path) -> list[Path]:
    return sorted(directory.glob("batch-ids-*.journal"))


def _checkpointed(wal: WriteAheadLog, ids: list[str]) -> None:
    for batch_id in ids:
        wal.batch_ids.add(batch_id)
    wal.append(b"x", 1)
    wal.checkpoint(wal.rotate())


def test_an_old_checkpoint_with_its_ids_inline_is_read_and_moved_to_a_journal(
    tmp_path: Path,
) -> None:
    (tmp_path / "checkpoint").write_text(json.dumps({"segment": 4, "batch_ids": ["a", "b"]}))
    wal = WriteAheadLog(tmp_path)
    assert wal.current_segment == 5
    assert "a" in wal.batch_ids and "b" in wal.batch_ids
    _checkpointed(wal, ["c"])
    wal.close()
    data = _checkpoint(tmp_path)
    assert data["batch_ids"] == ["c"]  # only the new id inline
    (journal,) = _journals(tmp_path)
    assert data["journal"] == journal.name
    assert journal.read_text().splitlines() == ['"a"', '"b"', '"c"']
    again = WriteAheadLog(tmp_path)
    assert again.batch_ids.recent() == ["a", "b", "c"]
    again.close()


def test_a_checkpoint_writes_only_the_ids_added_since_the_last_and_all_survive_a_reopen(
    tmp_path: Path,
) -> None:
    wal = WriteAheadLog(tmp_path)
    first = [f"batch-{i}" for i in range(1000)]
    _checkpointed(wal, first)
    (journal,) = _journals(tmp_path)
    size = journal.stat().st_size
    # odd ids round-trip too (escaped in the journal)
    later = ["late-1", 'quote"and\\slash', "new\nline", "ünï"]
    _checkpointed(wal, later)
    wal.close()
    data = _checkpoint(tmp_path)
    assert data["batch_ids"] == later
    assert data["journal"] == journal.name and _journals(tmp_path) == [journal]
    assert data["journal_bytes"] == journal.stat().st_size
    # appended to, not rewritten: it grew by the new ids' lines only
    assert journal.stat().st_size - size == sum(len(json.dumps(i)) + 1 for i in later)
    again = WriteAheadLog(tmp_path)
    assert again.batch_ids.recent() == first + later
    again.close()


def test_compaction_keeps_exactly_the_remembered_ids(tmp_path: Path) -> None:
    limit = 10
    wal = WriteAheadLog(tmp_path, remembered_batches=limit)
    added: list[str] = []
    names = set()
    for round_ in range(12):
        ids = [f"r{round_}-{i}" for i in range(4)]
        added += ids
        _checkpointed(wal, ids)
        (journal,) = _journals(tmp_path)  # the one the checkpoint names, no other
        names.add(journal.name)
        lines = journal.read_text().splitlines()
        assert len(lines) <= wal_module.JOURNAL_COMPACT_FACTOR * limit
        assert _checkpoint(tmp_path)["journal"] == journal.name
    assert len(names) > 2  # it was compacted, more than once
    wal.close()
    again = WriteAheadLog(tmp_path, remembered_batches=limit)
    assert again.batch_ids.recent() == added[-limit:]
    again.close()
    # right after a compaction the journal holds exactly the remembered ids
    wal = WriteAheadLog(tmp_path, remembered_batches=limit)
    while True:
        before = _journals(tmp_path)
        ids = [f"more-{len(added) + i}" for i in range(3)]
        added += ids
        _checkpointed(wal, ids)
        if _journals(tmp_path) != before:
            break
    (journal,) = _journals(tmp_path)
    assert [json.loads(line) for line in journal.read_text().splitlines()] == added[-limit:]
    assert wal.batch_ids.recent() == added[-limit:]
    wal.close()


def test_a_torn_last_journal_line_is_skipped_and_later_ids_are_read(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    _checkpointed(wal, ["a", "b"])
    wal.close()
    (journal,) = _journals(tmp_path)
    with journal.open("ab") as f:  # an append a kill cut short, its checkpoint not written
        f.write(b'"torn-id-that-never-')
    wal = WriteAheadLog(tmp_path)
    assert wal.batch_ids.recent() == ["a", "b"]
    _checkpointed(wal, ["c"])
    wal.close()
    assert journal.read_text().splitlines() == ['"a"', '"b"', '"c"']
    again = WriteAheadLog(tmp_path)
    assert again.batch_ids.recent() == ["a", "b", "c"]
    again.close()


def _batch(batch_id: str) -> tuple[IngestBatch, bytes]:
    raw = client.encode_ingest_request("lat", np.arange(3.0), batch_id=batch_id)
    request = region_node_pb2.IngestRequest.FromString(raw)
    return convert.ingest_batch_from_proto(request, time.time_ns()), raw


def test_a_kill_between_the_journal_append_and_the_checkpoint_loses_no_acknowledged_id(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wal"
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    wal = WriteAheadLog(directory)
    node.hold_wal(wal)
    for batch_id in ("b1", "b2"):
        assert node.ingest(*_batch(batch_id))
    wal.sync()  # acknowledged
    wal.checkpoint(wal.rotate())
    for batch_id in ("b3", "b4"):
        assert node.ingest(*_batch(batch_id))
    wal.sync()  # acknowledged
    (journal,) = _journals(directory)
    covered = journal.stat().st_size
    # the checkpoint cannot be written: the journal is appended to, the checkpoint not
    (directory / "checkpoint.tmp").mkdir()
    closed = wal.rotate()
    try:
        wal.checkpoint(closed)
    except OSError:
        pass
    else:
        raise AssertionError("the checkpoint was written")
    assert journal.stat().st_size > covered  # b3 and b4 appended, not covered
    assert _checkpoint(directory)["journal_bytes"] == covered
    wal.close()  # killed here
    (directory / "checkpoint.tmp").rmdir()

    node = RegionNode(NodeIdentity("r1", "r1-a"))
    wal = WriteAheadLog(directory)
    assert journal.stat().st_size == covered  # what no checkpoint covers is cut off
    node.hold_wal(wal)  # b3 and b4 from the segment the checkpoint did not delete
    for batch_id in ("b1", "b2", "b3", "b4"):
        assert not node.ingest(*_batch(batch_id)), batch_id  # a duplicate
    assert node.ingest(*_batch("b5"))
    wal.sync()
    wal.checkpoint(wal.rotate())
    wal.close()
    assert [json.loads(line) for line in journal.read_text().splitlines()] == [
        "b1",
        "b2",
        "b3",
        "b4",
        "b5",
    ]
    # every segment is checkpointed now: the ids come from the journal alone
    again = WriteAheadLog(directory)
    assert list(again.replay()) == []
    assert again.batch_ids.recent() == ["b1", "b2", "b3", "b4", "b5"]
    again.close()


def test_a_failed_checkpoint_gives_its_new_ids_to_the_next(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    _checkpointed(wal, ["a"])
    (tmp_path / "checkpoint.tmp").mkdir()
    try:
        _checkpointed(wal, ["b", "c"])
    except OSError:
        pass
    else:
        raise AssertionError("the checkpoint was written")
    (tmp_path / "checkpoint.tmp").rmdir()
    _checkpointed(wal, ["d"])
    assert _checkpoint(tmp_path)["batch_ids"] == ["b", "c", "d"]
    wal.close()
    (journal,) = _journals(tmp_path)
    assert journal.read_text().splitlines() == ['"a"', '"b"', '"c"', '"d"']
    again = WriteAheadLog(tmp_path)
    assert again.batch_ids.recent() == ["a", "b", "c", "d"]
    again.close()
