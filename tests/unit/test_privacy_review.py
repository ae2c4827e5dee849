"""Review fixes of the privacy release: shared accounts, failed saves, parameter types."""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.errors import Unavailable
from nethical_grpc.privacy import (
    PrivacyAccountant,
    PrivacyBudgetExhausted,
    PrivacyConfig,
    PrivateReleaser,
    geometric_error,
    geometric_noise,
    laplace_noise,
    min_count_for_delta,
    presence_delta,
)
from nethical_grpc.privacy.mechanisms import uniform_open
from nethical_grpc.series import GroupSummary, SeriesKey, SummaryQuery
from nethical_grpc.summary import Summary
from region_node.privacy_accounts import ACCOUNTS_FILE, JOURNAL_FILE, AccountsFile

W = 10_000_000_000
KEY = (SeriesKey("risk", ()), 100)


def make(**overrides: Any) -> PrivacyConfig:
    fields: dict[str, Any] = {
        "epsilon_per_release": 1.0,
        "window_budget": 3.0,
        "value_bound": 1.0,
        "min_count": 0,
    }
    fields.update(overrides)
    return PrivacyConfig(**fields)


def group(summary: Summary) -> GroupSummary:
    return GroupSummary(
        metric="risk",
        labels=(),
        summary=summary,
        start_ns=100 * W,
        end_ns=101 * W,
        data_as_of_ns=100 * W + 5,
    )


@pytest.fixture(scope="module")
def summary() -> Summary:
    return Summary.from_values(np.random.default_rng(1).uniform(0.0, 1.0, 500))


# ------------------------------------------------------------------- a shared accountant


def test_an_accountant_passed_in_is_used_even_while_it_is_empty(summary: Summary) -> None:
    """Two releasers over one store share one set of accounts (the documented way to
    keep n instances from spending n budgets); an empty accountant used to be replaced
    by a fresh one of each releaser's own, so each spent the whole budget again."""
    shared = PrivacyAccountant(3.0)
    first = PrivateReleaser(make(), window_ns=W, accountant=shared)
    second = PrivateReleaser(make(), window_ns=W, accountant=shared)
    assert first.accountant is shared and second.accountant is shared
    for version in range(2):
        first.release(SummaryQuery(), [group(summary)], data_version=version)
    second.release(SummaryQuery(), [group(summary)], data_version=9)
    assert shared.spent(KEY) == pytest.approx(3.0)
    with pytest.raises(PrivacyBudgetExhausted):
        second.release(SummaryQuery(), [group(summary)], data_version=10)


# ------------------------------------------------------------------- a save that fails


def test_a_release_whose_accounts_cannot_be_saved_is_not_charged(
    summary: Summary, tmp_path: Path
) -> None:
    """The answer of a commit whose accounts could not be saved never leaves, so it must
    not spend budget in memory either: each retry used to spend it again."""
    rel = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(3))
    accounts = AccountsFile(tmp_path)
    rel.on_charge = lambda: accounts.save(rel.accountant)
    assert accounts.load(rel.accountant) == 0
    blocker = tmp_path / JOURNAL_FILE
    blocker.mkdir()  # the accounts cannot be written (as on a full or broken disk)
    query = SummaryQuery()
    first = None
    for _ in range(3):
        pending = rel.prepare(query, [group(summary)], data_version=1)
        first = first or pending.release
        assert pending.release == first  # asked again: the same noise
        with pytest.raises(Unavailable, match="privacy accounts") as err:
            rel.commit(pending)
        assert "nothing was released" in str(err.value)
        assert rel.accountant.spent(KEY) == 0.0
        assert len(rel.accountant) == 0
    blocker.rmdir()
    out = rel.release(query, [group(summary)], data_version=1)
    assert out == first
    assert rel.accountant.spent(KEY) == pytest.approx(1.0)
    restarted = PrivacyAccountant(3.0)
    assert AccountsFile(tmp_path).load(restarted) == 1
    assert restarted.snapshot() == [("risk", [], 100, 1.0)]


def test_refund_undoes_exactly_one_charge() -> None:
    acc = PrivacyAccountant(1.0)
    other = (SeriesKey("risk", ()), 101)
    acc.charge([KEY], 0.1)
    acc.charge([KEY, other], 0.2)
    acc.refund([KEY, other], 0.2)
    assert acc.spent(KEY) == pytest.approx(0.1)
    assert len(acc) == 1  # an account the refund empties is gone, as if never charged
    with pytest.raises(ValueError, match="epsilon"):
        acc.refund([KEY], math.nan)


# ------------------------------------------------------------------- parameter types


@pytest.mark.parametrize("budget", [np.int64(3), np.float32(3.0), Fraction(3)])
def test_a_budget_the_config_accepts_is_accepted_by_the_releaser(budget: object) -> None:
    cfg = make(window_budget=budget)
    rel = PrivateReleaser(cfg, window_ns=np.int64(W))  # type: ignore[arg-type]
    assert rel.accountant.window_budget == 3.0
    assert rel.window_ns == W and type(rel.window_ns) is int
    acc = PrivacyAccountant(budget)  # type: ignore[arg-type]
    acc.charge([KEY], np.float32(1.0))  # type: ignore[arg-type]
    assert acc.spent(KEY) == 1.0


@pytest.mark.parametrize("bad", [True, "3", math.nan, math.inf, 0, -1.0])
def test_the_accountant_still_refuses_nonsense(bad: object) -> None:
    with pytest.raises(ValueError, match="window_budget"):
        PrivacyAccountant(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon"):
        PrivacyAccountant(1.0).charge([KEY], bad)  # type: ignore[arg-type]


def test_a_min_count_past_what_a_count_can_hold_is_refused_not_an_overflow() -> None:
    """A min count no uint64 count can reach used to pass the configuration and then
    crash the node's start with OverflowError (from the delta's float arithmetic)."""
    with pytest.raises(ValueError, match="min_count"):
        make(min_count=10**400)
    with pytest.raises(ValueError, match="min_count"):
        make(min_count=2**64)
    top = make(min_count=2**64 - 1)
    assert presence_delta(top) == 0.0
    assert presence_delta(make(min_count=2**64 - 1, mechanism="geometric")) == 0.0


@pytest.mark.parametrize("delta", [math.nan, -0.1, 0.0, math.inf, 1.5])
def test_min_count_for_delta_refuses_a_delta_that_is_not_a_probability(delta: float) -> None:
    """NaN used to answer 1 (a min count whose delta is about 1) without a word."""
    with pytest.raises(ValueError, match="delta"):
        min_count_for_delta(make(), delta)


@settings(max_examples=60, deadline=None)
@given(
    delta=st.floats(min_value=1e-300, max_value=1.0),
    eps=st.floats(min_value=0.01, max_value=20.0),
    mechanism=st.sampled_from(["laplace", "geometric"]),
)
def test_min_count_for_delta_is_the_smallest_meeting_any_valid_delta(
    delta: float, eps: float, mechanism: str
) -> None:
    cfg = make(epsilon_per_release=eps, window_budget=eps, mechanism=mechanism)
    t = min_count_for_delta(cfg, delta)
    assert (
        presence_delta(
            make(epsilon_per_release=eps, window_budget=eps, mechanism=mechanism, min_count=t)
        )
        <= delta
    )
    if t > 1:
        below = make(
            epsilon_per_release=eps, window_budget=eps, mechanism=mechanism, min_count=t - 1
        )
        assert presence_delta(below) > delta


# ------------------------------------------------------------------- seeded generators


@pytest.mark.parametrize(
    "bit_generator", [np.random.MT19937, np.random.PCG64, np.random.Philox, np.random.SFC64]
)
def test_noise_has_its_scale_whatever_bit_generator_seeds_it(bit_generator: Any) -> None:
    """MT19937's raw outputs are 32 bits: read as 64-bit words they made every uniform
    tiny (below 2^-32), so seeded Laplace noise was about -22 scales, never zero-mean."""
    rng = np.random.Generator(bit_generator(2024))
    u = uniform_open(50_000, rng)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(np.mean(u < 0.25)) - 0.25) < 0.01
    noise = laplace_noise(3.0, 50_000, rng)
    assert abs(float(noise.mean())) < 0.1
    assert abs(float(np.abs(noise).mean()) / 3.0 - 1.0) < 0.03
    k = geometric_noise(0.5, 50_000, rng)
    expected = geometric_error(0.5).expected_abs
    assert abs(float(np.abs(k).mean()) / expected - 1.0) < 0.03


def test_seeded_pcg64_noise_is_what_it_was() -> None:
    """The usual seeded generator keeps its stream: the 64-bit words it always gave."""
    raw = np.random.default_rng(5).bit_generator.random_raw(4)
    expected = ((raw >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52
    assert np.array_equal(uniform_open(4, np.random.default_rng(5)), expected)


# ------------------------------------------------------------------- saving the accounts


def _many_accounts(n_windows: int) -> PrivacyAccountant:
    acc = PrivacyAccountant(10.0)
    for m in range(10):
        acc.charge([(SeriesKey(f"m{m}", ()), w) for w in range(n_windows)], 1.0)
    return acc


def test_saving_after_a_release_writes_what_it_charged_not_every_account(
    tmp_path: Path,
) -> None:
    """Each release that charges saves the accounts before its answer leaves; rewriting
    all of them (10 metrics x a day of 10 s windows: about 1 s here, 22 MB at 100
    metrics) stalled the node's event loop for every query."""
    acc = _many_accounts(20_000)
    accounts = AccountsFile(tmp_path)
    assert accounts.load(acc) == 0
    accounts.save(acc)
    started = time.perf_counter()
    json.dumps(acc.snapshot())  # what a save of every account costs at least
    full = time.perf_counter() - started
    snapshot = tmp_path / ACCOUNTS_FILE
    before = snapshot.stat()
    key = (SeriesKey("m3", ()), 7)
    timings = []
    for _ in range(3):
        acc.charge([key], 1.0)
        started = time.perf_counter()
        accounts.save(acc)
        timings.append(time.perf_counter() - started)
    assert min(timings) < full / 5
    after = snapshot.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)  # not rewritten
    again = PrivacyAccountant(10.0)
    AccountsFile(tmp_path).load(again)
    assert again.spent(key) == 4.0
    assert again.spent((SeriesKey("m9", ()), 19_999)) == 1.0
    assert len(again) == len(acc)


def test_accounts_survive_any_sequence_of_saves_and_reloads(tmp_path: Path) -> None:
    acc = PrivacyAccountant(100.0)
    accounts = AccountsFile(tmp_path)
    accounts.load(acc)
    rng = np.random.default_rng(4)
    for step in range(60):
        keys = [
            (SeriesKey(f"m{int(m)}", (("k", "v"),)), int(w)) for m, w in rng.integers(0, 5, (3, 2))
        ]
        acc.charge(keys, 0.5)
        accounts.save(acc)
        if step % 17 == 0:  # a restart: a new file object reads it all back
            fresh = PrivacyAccountant(100.0)
            accounts = AccountsFile(tmp_path)
            accounts.load(fresh)
            assert fresh.snapshot() == acc.snapshot()
    fresh = PrivacyAccountant(100.0)
    AccountsFile(tmp_path).load(fresh)
    assert fresh.snapshot() == acc.snapshot()


def test_accounts_that_are_not_a_list_stop_the_start(tmp_path: Path) -> None:
    """``{}`` used to load as no accounts at all: every budget started afresh."""
    (tmp_path / ACCOUNTS_FILE).write_text("{}")
    with pytest.raises(ValueError, match="privacy accounts"):
        AccountsFile(tmp_path).load(PrivacyAccountant(1.0))


def test_a_journal_line_cut_short_at_the_end_is_skipped_and_one_inside_is_refused(
    tmp_path: Path,
) -> None:
    key = (SeriesKey("risk", ()), 5)
    acc = PrivacyAccountant(10.0)
    accounts = AccountsFile(tmp_path)
    accounts.load(acc)
    acc.charge([key], 1.0)
    accounts.save(acc)
    journal = tmp_path / JOURNAL_FILE
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'[["risk",[],5,2.')  # a stop while appending
    again = PrivacyAccountant(10.0)
    assert AccountsFile(tmp_path).load(again) == 1
    assert again.spent(key) == 1.0
    assert not journal.exists()  # folded into the accounts file at start
    journal.write_bytes(b'[["risk",[],5,2.\n' + whole)
    with pytest.raises(ValueError, match="privacy accounts"):
        AccountsFile(tmp_path).load(PrivacyAccountant(10.0))


def test_a_release_committed_twice_is_charged_once(summary: Summary) -> None:
    """A second commit of one prepared release charged its windows again."""
    rel = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(5))
    pending = rel.prepare(SummaryQuery(), [group(summary)], data_version=1)
    first = rel.commit(pending)
    spent = rel.accountant.spent(KEY)
    assert spent > 0
    assert rel.commit(pending) is first
    assert rel.accountant.spent(KEY) == spent
