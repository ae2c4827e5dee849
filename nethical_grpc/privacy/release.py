"""Differentially private release of group summaries: what is noised, how, and at what cost.

:func:`noise_summary` turns one true :class:`~nethical_grpc.summary.Summary` into a
released one (or ``None`` when suppressed); :class:`PrivateReleaser` applies it to the
groups of a query, charging the privacy budget of every window they cover and caching the
answer so that a repeated query gets the same noise. See the package docstring for the
guarantee and its assumptions.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from nethical_grpc.errors import Unavailable, first_line
from nethical_grpc.privacy.budget import BudgetKey, PrivacyAccountant, PrivacyBudgetExhausted
from nethical_grpc.privacy.config import PrivacyConfig
from nethical_grpc.privacy.grid import BucketGrid
from nethical_grpc.privacy.mechanisms import (
    NoiseError,
    combine_errors,
    geometric_error,
    geometric_noise,
    laplace_error,
    laplace_noise,
    mean_error,
)
from nethical_grpc.series import GroupSummary, Labels, SeriesKey, SummaryQuery
from nethical_grpc.summary import ExponentialHistogram, Moments, Summary

__all__ = [
    "Granularity",
    "MergedError",
    "PendingRelease",
    "PrivateRelease",
    "PrivateReleaser",
    "ReleaseInfo",
    "ReleasedGroup",
    "clip_to_bound",
    "merged_error",
    "noise_cells",
    "noise_summary",
    "presence_delta",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Budget units: ``"metric"`` charges (metric, window) for any group of the metric;
#: ``"series"`` charges each (series, window) the caller says a group merged.
Granularity = Literal["metric", "series"]

_DEFAULT_CACHE_SIZE: Final = 256
#: Estimated memory the kept answers may hold (see :meth:`PrivateReleaser._entry_bytes`):
#: 256 answers of thousands of groups each would otherwise hold gigabytes.
_DEFAULT_CACHE_BYTES: Final = 64 << 20
#: Memory of one released group beside its grid cells (its group, summary, moments and
#: histogram objects and arrays: about 1.3 KiB measured), and of one kept answer.
_GROUP_BYTES: Final = 1536
_ANSWER_BYTES: Final = 512


def clip_to_bound(values: npt.ArrayLike, config: PrivacyConfig) -> FloatArray:
    """``values`` clipped to ``[lower_bound, upper_bound]``, and magnitudes below the
    released grid's resolution (``config.zero_below``) set to 0 (new float64 array).

    Call it on ingest while privacy is on so that the value-bound assumption holds; the
    in-region summaries then describe clipped values too. The second step keeps a window's
    histogram on the grid's range: one tiny value (1e-300, say) would otherwise make it
    span a thousand octaves and downscale, moving every bucket, so that one observation
    changed the released buckets far beyond the mechanism's sensitivity of 1.
    """
    arr = np.clip(np.asarray(values, dtype=np.float64), config.lower_bound, config.upper_bound)
    arr[np.abs(arr) < config.zero_below] = 0.0
    return arr


#: The largest presence delta (see :func:`presence_delta`) the CLI accepts for one release.
MAX_PRESENCE_DELTA: Final = 1e-5


def min_count_for_delta(config: PrivacyConfig, delta: float = MAX_PRESENCE_DELTA) -> int:
    """The smallest ``min_count`` whose :func:`presence_delta` is at most ``delta`` under
    ``config``'s mechanism and epsilon (the delta falls as the min count grows).

    Raises:
        ValueError: ``delta`` is not a probability in ``(0, 1]``.
    """
    if not (isinstance(delta, numbers.Real) and 0.0 < float(delta) <= 1.0):
        raise ValueError(f"delta must be a probability in (0, 1], got {delta!r}")
    lo, hi = 1, 1
    while presence_delta(replace(config, min_count=hi)) > delta:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if presence_delta(replace(config, min_count=mid)) > delta:
            lo = mid + 1
        else:
            hi = mid
    return hi


def presence_delta(config: PrivacyConfig) -> float:
    """The delta of releasing a group only when its noisy count reaches ``min_count``.

    A group that one observation brings into being (true count 1, against no group at all
    without it) is released with probability ``P(noisy count of 1 >= min_count)``; that
    probability is the delta of the release's (epsilon, delta) guarantee. Over several
    releases of a window the deltas add up.
    """
    t = int(config.min_count)
    if t <= 0:
        return 1.0  # every group is released, an empty one included
    eps = config.epsilon_count
    if config.mechanism == "geometric":
        # released iff 1 + K >= t, K two-sided geometric: P(K >= m) = a^m / (1 + a), m >= 1
        m = t - 1
        a = math.exp(-eps)
        return a**m / (1.0 + a) if m >= 1 else 1.0 - a ** (1 - m) / (1.0 + a)
    # released iff round(1 + Z) >= t, i.e. Z >= t - 1.5, Z ~ Laplace(1 / eps)
    x = t - 1.5
    return 0.5 * math.exp(-x * eps) if x >= 0.0 else 1.0 - 0.5 * math.exp(x * eps)


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """How a release was noised, for the coordinator to report with the result.

    Attributes:
        noised: always True here (a summary sent without privacy carries no info).
        epsilon: epsilon the release charged to every window it covers.
        delta: :func:`presence_delta` (the chance a group of one observation is released).
        mechanism: ``"laplace"`` or ``"geometric"`` (counts and buckets).
        count_error: noise added to each group's count (observations).
        sum_error: noise added to each group's sum (the metric's unit).
        bucket_error: noise added to each histogram bucket before post-processing.
        min_count: groups with a noisy count below this were left out.
        lower_bound, upper_bound: the public value bounds, released as min and max.
    """

    noised: bool
    epsilon: float
    delta: float
    mechanism: str
    count_error: NoiseError
    sum_error: NoiseError
    bucket_error: NoiseError
    min_count: int
    lower_bound: float
    upper_bound: float

    @classmethod
    def from_config(cls, config: PrivacyConfig) -> ReleaseInfo:
        if config.mechanism == "geometric":
            count_err = geometric_error(config.epsilon_count)
            bucket_err = geometric_error(config.epsilon_histogram)
        else:
            count_err = laplace_error(1.0 / config.epsilon_count)
            bucket_err = laplace_error(1.0 / config.epsilon_histogram)
        return cls(
            noised=True,
            epsilon=float(config.epsilon_per_release),
            delta=presence_delta(config),
            mechanism=config.mechanism,
            count_error=count_err,
            sum_error=laplace_error(_sum_sensitivity(config) / config.epsilon_sum),
            bucket_error=bucket_err,
            min_count=int(config.min_count),
            lower_bound=config.lower_bound,
            upper_bound=config.upper_bound,
        )


@dataclass(frozen=True, slots=True)
class ReleasedGroup:
    """A released group summary and the first-order bound on its mean's expected error."""

    group: GroupSummary
    mean_error: float


@dataclass(frozen=True, slots=True)
class PrivateRelease:
    """The answer to a query under differential privacy.

    ``epsilon_spent`` is what this call charged each covered window (0 when the answer came
    from the cache, ``from_cache``); suppressed groups are simply absent.
    """

    groups: tuple[ReleasedGroup, ...]
    info: ReleaseInfo
    epsilon_spent: float
    from_cache: bool = False


_QueryKey = tuple[frozenset[str], Labels, tuple[str, ...], int | None, int | None]


@dataclass(frozen=True, slots=True)
class PendingRelease:
    """A release noised by :meth:`PrivateReleaser.prepare`, charged by ``commit``.

    ``release`` is the answer as ``commit`` returns it; ``keys`` the budget units it
    will charge (none for an answer from the cache, ``release.from_cache``).
    """

    query_key: _QueryKey
    data_version: Hashable
    keys: frozenset[BudgetKey]
    release: PrivateRelease


@dataclass(frozen=True, slots=True)
class MergedError:
    """Noise in a merge of several releases (e.g. one group over the regions that answered)."""

    count_error: NoiseError
    sum_error: NoiseError
    mean_error: float


def merged_error(infos: Iterable[ReleaseInfo], count: float, mean: float) -> MergedError:
    """Errors of the merged count, sum and mean of independently noised summaries.

    ``infos``: one per noised summary in the merge (leave out summaries sent without
    noise); ``count`` and ``mean``: the merged figures. Variances add
    (:func:`~nethical_grpc.privacy.mechanisms.combine_errors`); the mean's is the
    first-order bound of :func:`~nethical_grpc.privacy.mechanisms.mean_error`.
    """
    parts = list(infos)
    count_err = combine_errors(i.count_error for i in parts)
    sum_err = combine_errors(i.sum_error for i in parts)
    mean_err = mean_error(count, mean, count_err, sum_err) if parts else 0.0
    return MergedError(count_err, sum_err, mean_err)


def _sum_sensitivity(config: PrivacyConfig) -> float:
    return max(abs(config.lower_bound), abs(config.upper_bound))


def _noisy_count(count: int, config: PrivacyConfig, rng: np.random.Generator | None) -> int:
    if config.mechanism == "geometric":
        noisy = count + int(geometric_noise(config.epsilon_count, 1, rng)[0])
    else:
        noisy = round(count + float(laplace_noise(1.0 / config.epsilon_count, 1, rng)[0]))
    return max(0, noisy)


def noise_cells(
    cells: IntArray,
    config: PrivacyConfig,
    rng: np.random.Generator | None = None,
    unit_laplace: FloatArray | None = None,
) -> IntArray:
    """Grid cells plus noise for ``epsilon_histogram``, rounded, clamped and thresholded.

    Laplace(``1 / epsilon_histogram``) per cell (rounded) or the two-sided geometric; then
    negative results become 0 and so do results below ``bucket_threshold`` times
    ``1 / epsilon_histogram``. Every cell is noised, empty or not. ``unit_laplace``:
    Laplace(1) draws to use (scaled here) instead of drawing new ones.
    """
    eps = config.epsilon_histogram
    n = cells.shape[0]
    if config.mechanism == "geometric":
        noisy = cells + geometric_noise(eps, n, rng)
    else:
        unit = laplace_noise(1.0, n, rng) if unit_laplace is None else unit_laplace
        if unit.shape != cells.shape:
            raise ValueError(f"unit_laplace has shape {unit.shape}, cells {cells.shape}")
        noisy = np.rint(cells + unit * (1.0 / eps)).astype(np.int64)
    np.maximum(noisy, 0, out=noisy)
    noisy[noisy < config.bucket_threshold / eps] = 0
    return noisy


def _fit_total(cells: IntArray, total: int, grid: BucketGrid, mean: float) -> IntArray:
    """Non-negative integers proportional to ``cells`` that sum to ``total`` exactly.

    Largest-remainder rounding; with no mass at all, everything goes to the mean's cell.
    """
    have = int(cells.sum())
    if have == 0:
        out = np.zeros_like(cells)
        out[grid.cell_of(mean)] = total
        return out
    scaled = cells.astype(np.float64) * (total / have)
    out = np.floor(scaled).astype(np.int64)
    short = total - int(out.sum())
    if 0 < short <= out.shape[0]:
        out[np.argsort(out - scaled, kind="stable")[:short]] += 1
    elif short != 0:  # only from float rounding with astronomically large totals
        top = int(np.argmax(out))
        out[top] = max(0, int(out[top]) + short)
    return out


def noise_summary(
    summary: Summary,
    config: PrivacyConfig,
    rng: np.random.Generator | None = None,
    grid: BucketGrid | None = None,
) -> Summary | None:
    """The released form of ``summary``, or ``None`` when its noisy count is below min_count.

    Costs ``config.epsilon_per_release`` (count, sum and histogram by ``epsilon_split``).
    The result is a valid :class:`Summary` (``validate()`` passes, it merges and answers
    quantiles) whose

    * ``count`` is the true count plus noise, rounded and clamped at 0;
    * ``sum`` is the true sum plus Laplace(``B / epsilon_sum``), clamped to
      ``[count * lower_bound, count * upper_bound]``; ``mean = sum / count``;
    * ``min``/``max`` are the public bounds (no information about the data), except for a
      count of 1 where both equal the mean, as a single value requires;
    * histogram: the public grid's cells plus noise, rounded, clamped at 0, thresholded,
      then rescaled (largest remainder) so that they add up to ``count`` exactly;
    * ``m2`` is computed from the released histogram around the released mean (pure
      post-processing), clamped to ``[0, count * (max - min)^2 / 4]``.
    """
    g = grid if grid is not None else BucketGrid.from_config(config)
    lo, hi = config.lower_bound, config.upper_bound
    max_buckets = summary.histogram.max_buckets
    count = _noisy_count(summary.count, config, rng)
    if count < config.min_count:
        return None
    if count == 0:
        empty = ExponentialHistogram(g.scale, max(max_buckets, g.cells_per_side), g.zero_threshold)
        return Summary(Moments(), empty)
    # one draw for the sum and (Laplace) every cell: unit Laplace, scaled per use
    unit = laplace_noise(1.0, 1 + (g.size if config.mechanism == "laplace" else 0), rng)
    noise = float(unit[0]) * (_sum_sensitivity(config) / config.epsilon_sum)
    total = min(max(summary.total + noise, count * lo), count * hi)
    mean = min(max(total / count, lo), hi)
    noisy = noise_cells(
        g.project(summary.histogram), config, rng, unit[1:] if unit.size > 1 else None
    )
    cells = _fit_total(noisy, count, g, mean)
    histogram = g.histogram(cells, max_buckets)
    if count == 1:
        return Summary(Moments(1, mean, 0.0, mean, mean, mean, 0.0), histogram)
    dev = g.representatives() - mean
    m2 = float(np.dot(cells.astype(np.float64), dev * dev))
    spread = hi - lo
    m2 = min(max(m2, 0.0), count * (spread * spread / 4.0))
    return Summary(Moments(count, total, 0.0, lo, hi, mean, m2), histogram)


# ------------------------------------------------------------------------------------------------
# Releasing a query's groups
# ------------------------------------------------------------------------------------------------


class PrivateReleaser:
    """Releases a query's group summaries under a privacy budget, with an answer cache.

    Args:
        config: what to add and how much may be released.
        window_ns: the node's window width; budget units and cache keys are window ids.
        rng: a seeded generator for reproducible noise; ``None`` (production) draws from
            the operating system's cryptographic generator.
        cache_size: how many released answers to keep (least recently used go first; an
            evicted answer asked again is noised afresh and charged again), and as many
            prepared answers never committed.
        cache_bytes: the most memory (estimated: each released group's grid cells, 8
            bytes each, and about 1.5 KiB of objects) the kept answers may hold, committed
            and uncommitted together; past it the least recently used go, uncommitted
            ones first (they never left, so asking again charges nothing more). The
            newest answer is kept whatever its size.
        granularity: ``"metric"`` (default) charges ``(SeriesKey(metric, ()), window id)``
            for every window in a group's time range, which needs nothing but the
            :class:`GroupSummary` and over-charges label-disjoint queries; ``"series"``
            charges exactly the ``(series, window)`` pairs the caller passes as ``covered``.
            One node must keep one granularity: the two keep separate accounts.
        accountant: an existing accountant (e.g. restored from a snapshot); its budget is
            replaced by ``config.window_budget`` when they differ.
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        window_ns: int,
        rng: np.random.Generator | None = None,
        cache_size: int = _DEFAULT_CACHE_SIZE,
        granularity: Granularity = "metric",
        accountant: PrivacyAccountant | None = None,
        cache_bytes: int = _DEFAULT_CACHE_BYTES,
    ) -> None:
        try:  # any integer type (numpy's too), not a float or a bool
            width = 0 if isinstance(window_ns, bool) else operator.index(window_ns)
        except TypeError:
            width = 0
        if width <= 0:
            raise ValueError(f"window_ns must be a positive integer, got {window_ns!r}")
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 1:
            raise ValueError(f"cache_size must be an integer >= 1, got {cache_size!r}")
        if not isinstance(cache_bytes, int) or isinstance(cache_bytes, bool) or cache_bytes < 1:
            raise ValueError(f"cache_bytes must be an integer >= 1, got {cache_bytes!r}")
        if granularity not in ("metric", "series"):
            raise ValueError(f"granularity must be 'metric' or 'series', got {granularity!r}")
        self.config = config
        self.window_ns = width
        self.granularity: Granularity = granularity
        # an empty accountant is still the one to share: not ``accountant or ...``
        self.accountant = (
            accountant if accountant is not None else PrivacyAccountant(config.window_budget)
        )
        self.accountant.window_budget = float(config.window_budget)
        #: called after each release that charged the accounts, before it is returned
        #: (e.g. to save them: see region_node.privacy_accounts)
        self.on_charge: Callable[[], None] | None = None
        self.grid = BucketGrid.from_config(config)
        self.info = ReleaseInfo.from_config(config)
        #: releases that saw a true min/max beyond the value bound (in-region figure only)
        self.bound_violations = 0
        self._rng = rng
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        # every released group holds the whole grid's cells at most
        self._group_bytes = 8 * self.grid.size + _GROUP_BYTES
        self._cache: OrderedDict[_QueryKey, tuple[Hashable, PrivateRelease]] = OrderedDict()
        # prepared, never committed (refused by the caller): kept so that asking again
        # gets the same noise
        self._uncharged: OrderedDict[_QueryKey, PendingRelease] = OrderedDict()

    # ---------------------------------------------------------------- budget units

    def metric_keys(self, group: GroupSummary) -> set[BudgetKey]:
        """``(SeriesKey(metric, ()), window id)`` for every window in the group's range."""
        metric = SeriesKey(group.metric, ())
        first = group.start_ns // self.window_ns
        end = -(-group.end_ns // self.window_ns)  # ceil: the range ends on a window edge
        return {(metric, w) for w in range(first, max(end, first + 1))}

    def _keys(
        self, groups: Sequence[GroupSummary], covered: Sequence[Iterable[BudgetKey]] | None
    ) -> set[BudgetKey]:
        if self.granularity == "metric":
            keys: set[BudgetKey] = set()
            for g in groups:
                keys |= self.metric_keys(g)
            return keys
        if covered is None or len(covered) != len(groups):
            raise ValueError(
                "series granularity needs covered: one collection of (series, window id) per group"
            )
        return {k for units in covered for k in units}

    def _query_key(self, query: SummaryQuery) -> _QueryKey:
        w = self.window_ns
        first = None if query.start_ns is None else query.start_ns // w
        last = None if query.end_ns is None else (query.end_ns - 1) // w
        return (query.metrics, query.label_filter, query.group_by, first, last)

    # ---------------------------------------------------------------- releasing

    def release(
        self,
        query: SummaryQuery,
        groups: Sequence[GroupSummary],
        data_version: Hashable,
        covered: Sequence[Iterable[BudgetKey]] | None = None,
        charged_as: Sequence[GroupSummary] | None = None,
    ) -> PrivateRelease:
        """Noise ``groups`` (the true answer to ``query`` at ``data_version``) for release.

        The same query (same metrics, filter, grouping and window range) at the same
        ``data_version`` returns the cached release and charges nothing. Otherwise every
        covered window is charged ``epsilon_per_release`` (each once, however many groups
        cover it), then each group is noised; groups whose noisy count is below
        ``min_count`` are dropped. :meth:`prepare` then :meth:`commit`, with nothing in
        between.

        ``charged_as`` (metric granularity): the answer to the query without its label
        filter. Its windows are charged instead of the groups', so what is charged, and
        whether a spent budget refuses the query, does not depend on whether a filtered
        group exists (a filter matching nothing would otherwise cost nothing, and
        "refused" against "empty" would tell that the group exists).

        Raises:
            PrivacyBudgetExhausted: some covered window lacks the budget; nothing charged.
            Unavailable: the accounts could not be saved (``on_charge``); nothing charged.
            ValueError: ``covered`` is missing or mismatched under series granularity.
        """
        return self.commit(self.prepare(query, groups, data_version, covered, charged_as))

    def prepare(
        self,
        query: SummaryQuery,
        groups: Sequence[GroupSummary],
        data_version: Hashable,
        covered: Sequence[Iterable[BudgetKey]] | None = None,
        charged_as: Sequence[GroupSummary] | None = None,
    ) -> PendingRelease:
        """The release :meth:`release` would return, noised but not charged yet: the
        caller may still refuse to send it (too large, say), and then nothing is spent.
        :meth:`commit` charges it and makes it the cached answer.

        A prepared release that is not committed is kept (by query and data version, like
        a committed one): preparing the same query again gives the same noise, so asking
        again and again cannot average it away. Same arguments and errors as
        :meth:`release` (a spent budget is refused here, before any noise is drawn).
        """
        qkey = self._query_key(query)
        hit = self._cache.get(qkey)
        if hit is not None and hit[0] == data_version:
            self._cache.move_to_end(qkey)
            cached = replace(hit[1], epsilon_spent=0.0, from_cache=True)
            return PendingRelease(qkey, data_version, frozenset(), cached)
        if charged_as is not None:
            if self.granularity != "metric":
                raise ValueError("charged_as needs metric granularity")
            keys = self._keys(charged_as, None) | self._keys(groups, None)
        else:
            keys = self._keys(groups, covered)
        eps = float(self.config.epsilon_per_release)
        short = self.accountant.shortfalls(keys, eps)
        if short:
            raise PrivacyBudgetExhausted.for_windows(short, eps, self.accountant.window_budget)
        kept = self._uncharged.get(qkey)
        if kept is not None and kept.data_version == data_version and kept.keys == keys:
            self._uncharged.move_to_end(qkey)
            return kept
        released = []
        for group in groups:
            if not self._within_bound(group):
                continue
            noised = noise_summary(group.summary, self.config, self._rng, self.grid)
            if noised is None:
                continue
            # the newest observation's exact time would date someone's action: window edge
            as_of = min(group.end_ns, -(-group.data_as_of_ns // self.window_ns) * self.window_ns)
            out = replace(group, summary=noised, data_as_of_ns=as_of)
            err = mean_error(noised.count, noised.mean, self.info.count_error, self.info.sum_error)
            released.append(ReleasedGroup(out, err))
        result = PrivateRelease(tuple(released), self.info, eps if keys else 0.0)
        pending = PendingRelease(qkey, data_version, frozenset(keys), result)
        self._uncharged[qkey] = pending
        self._uncharged.move_to_end(qkey)
        self._trim(result)
        return pending

    def commit(self, pending: PendingRelease) -> PrivateRelease:
        """Charge a prepared release's windows and cache it; returns the release.

        Raises:
            PrivacyBudgetExhausted: some covered window lacks the budget (it was spent
                since :meth:`prepare`); nothing charged.
            Unavailable: ``on_charge`` failed (the accounts could not be saved): the
                charge is undone and the release stays uncommitted, so the caller must not
                send it; asking again gets the same noise.
        """
        if pending.release.from_cache:
            return pending.release
        cached = self._cache.get(pending.query_key)
        if cached is not None and cached[1] is pending.release:  # committed already
            return pending.release
        if pending.keys:
            eps = float(self.config.epsilon_per_release)
            self.accountant.charge(pending.keys, eps)
            if self.on_charge is not None:
                try:
                    self.on_charge()
                except Exception as exc:
                    # the answer does not leave: spending its budget would make every
                    # retry spend it again, for nothing released
                    self.accountant.refund(pending.keys, eps)
                    log.error("cannot save the privacy accounts (answer refused): %s", exc)
                    raise Unavailable(
                        message=(
                            f"cannot save the privacy accounts ({first_line(exc)}): nothing "
                            "was released or charged; retry once the accounts can be saved"
                        ),
                        reason="PRIVACY_ACCOUNTS_UNSAVED",
                    ) from exc
        if self._uncharged.get(pending.query_key) is pending:
            del self._uncharged[pending.query_key]
        self._cache[pending.query_key] = (pending.data_version, pending.release)
        self._cache.move_to_end(pending.query_key)
        self._trim(pending.release)
        return pending.release

    def _entry_bytes(self, release: PrivateRelease) -> int:
        """Estimated memory a kept answer holds (an upper bound on its cells)."""
        return _ANSWER_BYTES + len(release.groups) * self._group_bytes

    def _trim(self, newest: PrivateRelease) -> None:
        """Evict the least recently used answers past ``cache_size`` (of each kind), then
        while the kept answers pass ``cache_bytes``: uncommitted ones first, then committed
        ones; never ``newest``, the answer just kept."""
        while len(self._uncharged) > self._cache_size:
            self._uncharged.popitem(last=False)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        held = sum(self._entry_bytes(p.release) for p in self._uncharged.values())
        held += sum(self._entry_bytes(r) for _, r in self._cache.values())
        for qkey in [k for k, p in self._uncharged.items() if p.release is not newest]:
            if held <= self._cache_bytes:
                return
            held -= self._entry_bytes(self._uncharged.pop(qkey).release)
        for qkey in [k for k, (_, r) in self._cache.items() if r is not newest]:
            if held <= self._cache_bytes:
                return
            held -= self._entry_bytes(self._cache.pop(qkey)[1])

    def _within_bound(self, group: GroupSummary) -> bool:
        """Whether the group's values keep to the value bound; one that does not (a window
        restored from data written without privacy, say) is left out of the release: its
        sum and mean would tell a single value beyond the bound."""
        s = group.summary
        if s.count and (s.min < self.config.lower_bound or s.max > self.config.upper_bound):
            self.bound_violations += 1
            log.warning(
                "metric %r has values outside the privacy value bound [%g, %g] (windows "
                "not clipped at ingest): left out of the release",
                group.metric,
                self.config.lower_bound,
                self.config.upper_bound,
            )
            return False
        return True

    def forget_windows_before(self, window_id: int) -> int:
        """Drop budget accounts of evicted windows (id ``< window_id``); returns how many."""
        return self.accountant.forget_windows_before(window_id)

    def clear_cache(self) -> None:
        """Forget cached answers (they are re-noised and charged when asked again)."""
        self._cache.clear()
        self._uncharged.clear()
