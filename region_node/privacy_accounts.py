"""The privacy budgets a node has spent, kept in a file beside its write-ahead log.

Windows outlive a restart (the write-ahead log replays them, the store restores them), so
the epsilon their releases spent must outlive it too: otherwise every restart refilled
every window's budget, and a window could be released again and again. With
``--wal-dir``, the accounts are written to ``privacy-accounts.json`` there after every
release that charged them (before the answer leaves), and read back at start before the
node serves. The file is replaced whole (written aside, then renamed): a process that
dies mid-write leaves the previous accounts, never a torn file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Final

from nethical_grpc.privacy import PrivacyAccountant

log = logging.getLogger(__name__)

ACCOUNTS_FILE: Final = "privacy-accounts.json"


class AccountsFile:
    """``privacy-accounts.json`` in ``directory``: load it into an accountant, save it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ACCOUNTS_FILE

    def load(self, accountant: PrivacyAccountant) -> int:
        """Add the saved accounts to ``accountant`` (keeping the larger spend of each);
        the number of accounts read. ValueError for a file that does not parse."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            rows = json.loads(text)
            accountant.restore(rows)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"cannot read the privacy accounts {self.path}: {exc}; the node will not "
                "start with budgets it cannot account for (move the file aside to start "
                "afresh, knowingly)"
            ) from None
        return len(rows)

    def save(self, accountant: PrivacyAccountant) -> None:
        """Write the accounts (replacing the file whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(accountant.snapshot(), separators=(",", ":")))
        os.replace(tmp, self.path)
