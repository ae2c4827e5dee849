"""The privacy budgets a node has spent, kept in files beside its write-ahead log.

Windows outlive a restart (the write-ahead log replays them, the store restores them), so
the epsilon their releases spent must outlive it too: otherwise every restart refilled
every window's budget, and a window could be released again and again. With
``--wal-dir``, the accounts are kept there and read back at start before the node serves:

* ``privacy-accounts.json``: every account, as of the last compaction (at start, and
  when the journal has grown past a few times its size). Replaced whole (written aside,
  fsynced, then renamed): a process that dies mid-write leaves the previous accounts,
  never a torn file.
* ``privacy-accounts.journal``: one JSON line per release that charged the accounts
  (before the answer leaves), holding the new totals of the accounts it charged only, so
  that a release costs what it charged, not a rewrite of every account. Each line is
  fsynced before the answer leaves, so a charge outlives a crash of the machine too.
  Totals only grow, and loading keeps the larger spend of each account, so the lines
  replay in any order and a line written twice does no harm. A last line cut short (a process that
  died while appending it) belongs to an answer that never left, and is skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from nethical_grpc.privacy import PrivacyAccountant
from region_node.durable_files import fsync_dir, write_durably

log = logging.getLogger(__name__)

ACCOUNTS_FILE: Final = "privacy-accounts.json"
JOURNAL_FILE: Final = "privacy-accounts.journal"

#: The journal is folded into the accounts file when it passes this many times the
#: accounts file's size (and at least ``_COMPACT_MIN_BYTES``).
_COMPACT_RATIO: Final = 4
_COMPACT_MIN_BYTES: Final = 1 << 20


class AccountsFile:
    """The accounts in ``directory``: load them into an accountant, save its changes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ACCOUNTS_FILE
        self.journal = directory / JOURNAL_FILE
        self._snapshot_bytes = 0

    def load(self, accountant: PrivacyAccountant) -> int:
        """Add the saved accounts to ``accountant`` (keeping the larger spend of each),
        fold the journal into the accounts file, and return the number of rows read.
        ValueError for accounts that do not parse."""
        read = 0
        where = str(self.path)
        try:
            for where, text in self._saved():  # noqa: B007 (the error below names it)
                rows = json.loads(text)
                if not isinstance(rows, list):
                    raise ValueError(f"expected a list of accounts, got {type(rows).__name__}")
                accountant.restore(rows)
                read += len(rows)
        except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
            # (a window id of 1e999 reads as infinity: OverflowError, not a ValueError)
            raise ValueError(
                f"cannot read the privacy accounts {where}: {exc}; the node will not "
                f"start with budgets it cannot account for (move {self.path.name} and "
                f"{self.journal.name} aside to start afresh, knowingly)"
            ) from None
        self.compact(accountant)
        return read

    def _saved(self) -> Iterator[tuple[str, str | bytes]]:
        """The accounts file's text, then each journal line's, each with where it was
        read (the file, the journal's line), so that an error names it."""
        with contextlib.suppress(FileNotFoundError):
            text = self.path.read_text()
            yield str(self.path), text
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        for number, line in enumerate(lines[:-1], 1):
            yield f"{self.journal} line {number}", line
        if lines[-1]:  # no newline: cut short while written, its answer never left
            log.warning(
                "privacy accounts journal %s ends with an unfinished line (a stop while "
                "saving a release that was never sent): skipped",
                self.journal,
            )

    def save(self, accountant: PrivacyAccountant) -> None:
        """Append the accounts charged since the last save to the journal (compacting it
        when it has grown large). On an error nothing is appended, and the changes stay
        to be saved."""
        rows = accountant.changed_rows()
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(rows, separators=(",", ":")) + "\n").encode()
        with open(self.journal, "ab") as f:
            start = f.tell()
            try:
                f.write(line)
                f.flush()
                # on the disk before the answer leaves: a machine that crashed after it
                # would otherwise come back with the charge forgotten
                os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):  # no partial line for the next to follow
                    f.truncate(start)
                raise
        if start == 0:  # a new journal: its name too
            fsync_dir(self.journal.parent)
        accountant.clear_changes()
        if start + len(line) > max(_COMPACT_MIN_BYTES, _COMPACT_RATIO * self._snapshot_bytes):
            try:
                self.compact(accountant)
            except OSError as exc:  # the journal holds the accounts: retried next save
                log.warning("cannot compact the privacy accounts %s: %s", self.path, exc)

    def compact(self, accountant: PrivacyAccountant) -> None:
        """Write every account to the accounts file (replacing it whole), then drop the
        journal."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(accountant.snapshot(), separators=(",", ":"))
        write_durably(self.path, text)
        # a stop here leaves the journal too: replayed, it changes nothing
        self.journal.unlink(missing_ok=True)
        self._snapshot_bytes = len(text)
        accountant.clear_changes()
