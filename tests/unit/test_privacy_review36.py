"""Review fixes of the privacy release: the answer cache's memory bound and the checks of
a grid configuration that would release nothing but the zero bucket."""

from __future__ import annotations

import gc
import math
import re
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.privacy import BucketGrid, PrivacyConfig, PrivateReleaser, noise_summary
from nethical_grpc.series import GroupSummary, SummaryQuery
from nethical_grpc.summary import Summary
from nethical_grpc.summary.exponential_histogram import MAX_SCALE, MIN_SCALE

W = 10_000_000_000


def make(**overrides: Any) -> PrivacyConfig:
    fields: dict[str, Any] = {
        "epsilon_per_release": 1.0,
        "window_budget": 1000.0,
        "value_bound": 1.0,
        "min_count": 0,
    }
    fields.update(overrides)
    return PrivacyConfig(**fields)


def groups(n: int) -> list[GroupSummary]:
    summary = Summary.from_values(np.random.default_rng(1).uniform(-1.0, 1.0, 300))
    return [
        GroupSummary(
            metric="risk",
            labels=(("agent", f"a{i}"),),
            summary=summary,
            start_ns=100 * W,
            end_ns=101 * W,
            data_as_of_ns=100 * W + 5,
        )
        for i in range(n)
    ]


def query(i: int) -> SummaryQuery:
    return SummaryQuery(metrics=frozenset({"risk", f"q{i}"}), group_by=("agent",))


# ------------------------------------------------------------------- the answer cache


def test_the_answers_kept_stay_within_cache_bytes() -> None:
    """Each kept answer holds every released group's grid cells: 256 answers of
    thousands of groups held gigabytes, as only their number was bounded."""
    # every cell above the threshold: each group keeps its whole grid, the worst case
    config = make(bucket_threshold=0.0, histogram_octaves=64)
    many = groups(150)
    limit = 4 << 20
    releaser = PrivateReleaser(config, window_ns=W, rng=np.random.default_rng(2), cache_bytes=limit)
    releaser.release(query(-1), many, data_version=0)  # first-use allocations
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):  # ~40 MB of answers were kept before
            releaser.release(query(i), many, data_version=0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown <= limit, f"the kept answers grew by {grown} bytes, past {limit}"
    # the newest answers are still kept: asking again spends nothing
    again = releaser.release(query(39), many, data_version=0)
    assert again.from_cache and again.epsilon_spent == 0.0


def test_uncommitted_answers_go_before_committed_ones() -> None:
    """Evicting an answer that never left costs nothing; evicting a sent one makes
    asking again spend the budget again."""
    many = groups(20)
    probe = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(3))
    one = probe._entry_bytes(probe.release(query(0), many, data_version=0))
    releaser = PrivateReleaser(
        make(), window_ns=W, rng=np.random.default_rng(3), cache_bytes=2 * one
    )
    sent = releaser.release(query(0), many, data_version=0)
    refused = releaser.prepare(query(1), many, data_version=0)  # too large, say: not sent
    releaser.release(query(2), many, data_version=0)  # one answer too many
    again = releaser.release(query(0), many, data_version=0)
    assert again.from_cache and again.groups == sent.groups
    fresh = releaser.prepare(query(1), many, data_version=0)
    assert fresh is not refused  # the uncommitted answer went


def test_the_newest_answer_is_kept_whatever_its_size() -> None:
    many = groups(10)
    releaser = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(4), cache_bytes=1)
    first = releaser.release(query(0), many, data_version=0)
    again = releaser.release(query(0), many, data_version=0)
    assert again.from_cache and again.epsilon_spent == 0.0 and again.groups == first.groups
    assert releaser.accountant.spent(next(iter(releaser.metric_keys(many[0])))) == 1.0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1", None])
def test_cache_bytes_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="cache_bytes must be an integer >= 1"):
        PrivateReleaser(make(), window_ns=W, cache_bytes=bad)  # type: ignore[arg-type]


def test_a_cache_size_of_true_is_refused_as_window_ns_is() -> None:
    with pytest.raises(ValueError, match="cache_size must be an integer >= 1"):
        PrivateReleaser(make(), window_ns=W, cache_size=True)


# ------------------------------------------------------------------- grid configuration


def test_a_grid_without_buckets_is_refused() -> None:
    """At a coarse scale the octaves below the bound hold no bucket: every value was
    released in the zero bucket (all quantiles 0), or the release failed on an infinite
    zero threshold."""
    with pytest.raises(ValueError, match="too coarse"):
        make(histogram_scale=-10, histogram_octaves=1)
    with pytest.raises(ValueError, match="too coarse"):
        make(histogram_scale=-6, histogram_octaves=1, value_bound=3.0)


@settings(max_examples=300, deadline=None)
@given(
    scale=st.integers(MIN_SCALE, MAX_SCALE),
    octaves=st.integers(1, 2100),
    bound=st.floats(1e-300, 1e100),
    nonnegative=st.booleans(),
)
def test_every_accepted_grid_resolves_the_bound(
    scale: int, octaves: int, bound: float, nonnegative: bool
) -> None:
    try:
        config = make(
            value_bound=bound,
            histogram_scale=scale,
            histogram_octaves=octaves,
            nonnegative=nonnegative,
        )
    except ValueError:
        return
    grid = BucketGrid.from_config(config)
    assert grid.cells_per_side >= 1
    assert 0.0 < grid.zero_threshold < bound
    assert grid.cell_of(bound) == grid.size - 1
    summary = Summary.from_values(np.full(40, bound))
    out = noise_summary(summary, config, np.random.default_rng(0), grid)
    assert out is not None
    out.validate()


def test_a_value_bound_too_small_for_any_octave_says_so() -> None:
    """It said 'use fewer than 16 octaves', which no octave count satisfied."""
    with pytest.raises(ValueError, match=r"value_bound must be at least 4\.45\d*e-308"):
        make(value_bound=3e-308)


@pytest.mark.parametrize("bound", [1e-300, 3e-307, 1.0, 1e100])
def test_the_octaves_an_underflow_error_suggests_are_accepted(bound: float) -> None:
    with pytest.raises(ValueError, match=r"use at most \d+ octaves") as info:
        make(value_bound=bound, histogram_octaves=4000, histogram_scale=-1)
    fits = int(re.findall(r"at most (\d+) octaves", str(info.value))[0])
    assert math.ldexp(bound, -fits) >= 2.2250738585072014e-308
    config = make(value_bound=bound, histogram_octaves=fits, histogram_scale=-1)
    assert BucketGrid.from_config(config).cells_per_side >= 1
    with pytest.raises(ValueError, match="underflows"):
        make(value_bound=bound, histogram_octaves=fits + 1, histogram_scale=-1)


def test_a_grid_past_1074_octaves_builds_and_releases() -> None:
    """The grid computed its floor as ``bound * 2.0 ** -octaves``, and ``2.0 ** -1075`` is
    0: a configuration the checks accept (a large bound, many octaves at a coarse scale)
    failed every releaser built from it with 'bucket_index needs a finite non-zero value'."""
    config = make(value_bound=1e100, histogram_octaves=1354, histogram_scale=-1)
    releaser = PrivateReleaser(config, window_ns=W, rng=np.random.default_rng(5))
    assert releaser.grid.zero_threshold == pytest.approx(config.zero_below, rel=1.0)
    out = releaser.release(query(0), groups(3), data_version=0)
    assert len(out.groups) == 3
    for g in out.groups:
        g.group.summary.validate()


def test_an_underflowing_bound_is_told_the_bound_that_fits() -> None:
    """The CLI exposes --dp-value-bound but not the octaves: the error names a bound."""
    with pytest.raises(ValueError, match=r"^value_bound 1e-305 \* 2\^-16") as info:
        make(value_bound=1e-305)
    least = float(re.findall(r"value_bound of at least (\S+)$", str(info.value))[0])
    assert make(value_bound=least).zero_below >= 2.2250738585072014e-308
    with pytest.raises(ValueError, match="underflows"):
        make(value_bound=least / 2.0)
