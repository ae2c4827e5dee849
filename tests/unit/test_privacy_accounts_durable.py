"""The privacy accounts reach the disk (fsync), not only the page cache, before a release
is answered: a machine that crashed after the answer left would otherwise come back with
the charge forgotten and the window's budget refilled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nethical_grpc.privacy import PrivacyAccountant
from nethical_grpc.series import SeriesKey
from region_node.privacy_accounts import ACCOUNTS_FILE, JOURNAL_FILE, AccountsFile

KEY = (SeriesKey("risk", ()), 100)


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files and directories fsynced, in order (os.fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_a_charge_is_fsynced_before_save_returns(tmp_path: Path, synced: list[str]) -> None:
    accounts = AccountsFile(tmp_path)
    accountant = PrivacyAccountant(3.0)
    accounts.load(accountant)
    synced.clear()

    accountant.charge([KEY], 1.0)
    accounts.save(accountant)
    journal = str(tmp_path / JOURNAL_FILE)
    assert synced == [journal, str(tmp_path)]  # the line, then the new file's name

    accountant.charge([KEY], 0.5)
    accounts.save(accountant)
    assert synced[2:] == [journal]  # the file exists: its line only


def test_a_compaction_replaces_the_accounts_durably(tmp_path: Path, synced: list[str]) -> None:
    accounts = AccountsFile(tmp_path)
    accountant = PrivacyAccountant(3.0)
    accountant.charge([KEY], 1.0)
    accounts.compact(accountant)
    written = str(tmp_path / (ACCOUNTS_FILE + ".tmp"))
    assert synced == [written, str(tmp_path)]  # the file before its rename, then the rename
    restored = PrivacyAccountant(3.0)
    assert AccountsFile(tmp_path).load(restored) == 1
    assert restored.spent(KEY) == 1.0
