"""Review of the write-ahead log and the windows: crash leftovers, stray files, and the
oldest time an observation is accepted when the retention is not a whole number of
windows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nethical_grpc.errors import InvalidArgument
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.summary import Summary
from region_node.wal import WriteAheadLog
from region_node.windows import WindowConfig, WindowStore

S = 1_000_000_000
REPO = Path(__file__).resolve().parents[2]


def _killed_after_append(directory: Path, *, synced: bool) -> None:
    """Another process opens the log, appends a record (synced or not) and dies without
    closing it."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from region_node.wal import WriteAheadLog\n"
        "wal = WriteAheadLog(Path(sys.argv[1]))\n"
        "wal.append(b'record', 5)\n"
        f"{'wal.sync()' if synced else 'pass'}\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(directory)], check=True, cwd=REPO)


def test_a_segment_a_kill_left_without_records_is_dropped_once_read(tmp_path: Path) -> None:
    # killed before its first sync: the segment file exists, empty
    _killed_after_append(tmp_path, synced=False)
    # killed mid-write of its first record: the segment holds part of a header only
    _killed_after_append(tmp_path, synced=True)
    segments = sorted(tmp_path.glob("wal-*.log"))
    assert [p.stat().st_size for p in segments] == [0, 16 + len(b"record")]
    segments[1].write_bytes(segments[1].read_bytes()[:5])

    wal = WriteAheadLog(tmp_path)
    assert list(wal.replay()) == []  # read: neither holds a record
    # every record they hold (none) is older than any cutoff: nothing keeps them
    assert wal.drop_older_than(1) == 2
    assert wal.size() == (0, 0)
    wal.close()


def test_a_segment_read_only_in_part_keeps_its_unread_records(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"old", 1)
    wal.append(b"new", 1_000)
    wal.close()
    again = WriteAheadLog(tmp_path)
    for record in again.replay():
        assert record == (1, b"old")
        break  # the reader stops before the segment's end
    # its newest record is unknown yet: not dropped on what little was read
    assert again.drop_older_than(500) == 0
    assert list(again.replay()) == [(1, b"old"), (1_000, b"new")]
    again.close()


def test_a_stray_file_named_like_a_segment_does_not_stop_the_log_opening(
    tmp_path: Path,
) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(b"a", 1)
    wal.close()
    (tmp_path / "wal-\u00b2.log").write_bytes(b"")  # superscript two: a "digit" int() refuses
    again = WriteAheadLog(tmp_path)
    assert list(again.replay()) == [(1, b"a")]
    again.close()


def _at(t_ns: int) -> IngestBatch:
    return IngestBatch(SeriesKey("m", ()), np.ones(1), None, t_ns)


def _restored() -> Summary:
    s = Summary()
    s.update(np.ones(1))
    return s


def test_every_window_retention_keeps_takes_observations_when_retention_is_not_whole_windows() -> (
    None
):
    # 25 s of retention over 10 s windows, rollup off
    store = WindowStore(WindowConfig(window_ns=10 * S, retention_ns=25 * S, rollup_after_ns=0))
    now = 100 * S
    oldest = store.oldest_accepted_ns(now)
    assert oldest % (10 * S) == 0  # the start of a window, as documented
    # the window [80 s, 90 s) is kept by the eviction ...
    store.restore(SeriesKey("m", ()), 8, _restored(), 85 * S)
    assert store.evict_expired(now) == 0
    # ... so an observation in it, at 82 s, is taken
    early = _at(82 * S)
    store.check_times(early, now)
    store.apply(early)
    [g] = store.summaries(SummaryQuery())
    assert g.summary.count == 2 and g.start_ns == 80 * S
    # and the window before it, which the eviction drops, is refused
    with pytest.raises(InvalidArgument, match=r"oldest accepted: Unix 80\.000"):
        store.check_times(_at(79 * S), now)


def test_the_rollup_horizon_takes_all_of_its_window_when_not_whole_windows() -> None:
    # rollup after 25 s into 30 s rollup windows of 10 s windows; 1 h retention
    store = WindowStore(
        WindowConfig(
            window_ns=10 * S,
            retention_ns=3600 * S,
            rollup_after_ns=25 * S,
            rollup_window_ns=30 * S,
        )
    )
    now = 1_000 * S
    assert store.oldest_accepted_ns(now) == 980 * S
    store.roll_up(now)
    # the horizon's window [980 s, 990 s) is not rolled up: it takes all of it
    store.check_times(_at(981 * S), now)
    assert store.oldest_accepted_ns(now) == 980 * S
