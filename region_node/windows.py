"""Tumbling, epoch-aligned windows of per-series summaries, with retention and caps.

Windows older than ``rollup_after`` are merged into wider, epoch-aligned rollup windows
(``rollup_window``, a multiple of the window), so a series costs a few hundred summaries
a day instead of one per window; the node then refuses observations that old (they would
land in a window already merged). A window is merged only once it is flushed (not dirty):
the store keeps every window at full width, and a flush replaces a stored window whole.

Everything here is synchronous and runs on the server's event loop thread; batches
are applied atomically (validated and cardinality-checked before any state changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nethical_grpc.errors import FieldViolation, InvalidArgument, ResourceExhausted
from nethical_grpc.series import GroupSummary, IngestBatch, Labels, SeriesKey, SummaryQuery
from nethical_grpc.summary import DEFAULT_MAX_BUCKETS, DEFAULT_SCALE, ExponentialHistogram, Summary
from nethical_grpc.validation import quoted

NANOS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class WindowConfig:
    window_ns: int = 10 * NANOS
    retention_ns: int = 24 * 3600 * NANOS
    histogram_scale: int = DEFAULT_SCALE
    max_buckets: int = DEFAULT_MAX_BUCKETS
    max_label_sets_per_metric: int = 1000
    max_series: int = 100_000
    max_future_ns: int = 5 * 60 * NANOS
    # windows older than this are merged into rollup windows (0: never)
    rollup_after_ns: int = 3600 * NANOS
    rollup_window_ns: int = 300 * NANOS

    def __post_init__(self) -> None:
        if self.window_ns <= 0:
            raise ValueError("window must be positive")
        if self.retention_ns < self.window_ns:
            raise ValueError("retention must be at least one window")
        if self.rollup_after_ns < 0:
            raise ValueError("--rollup-after must be 0 (never) or positive")
        if 0 < self.rollup_after_ns < self.retention_ns:  # in effect
            if self.rollup_after_ns < self.window_ns:
                raise ValueError("--rollup-after must be at least one window (or 0: never)")
            if self.rollup_window_ns <= self.window_ns or self.rollup_window_ns % self.window_ns:
                raise ValueError(
                    f"the rollup window (--rollup-window, {self.rollup_window_ns / NANOS:g} s) "
                    f"must be a multiple of the window (--window, {self.window_ns / NANOS:g} s) "
                    "larger than it"
                )
        # the sketch's own checks (scale range, bucket bound), at start-up rather than
        # on every ingest
        ExponentialHistogram(self.histogram_scale, self.max_buckets)
        if self.max_label_sets_per_metric < 1:
            raise ValueError("max label sets per metric must be at least 1")
        if self.max_series < 1:
            raise ValueError("max series must be at least 1")

    @property
    def most_windows_per_series(self) -> int:
        """The most windows, rollup windows included, a series holds when its windows are
        flushed in time and the node's maintenance pass runs at least once a window."""
        window, retention = self.window_ns, self.retention_ns
        if not self.rollup_factor:
            return retention // window + 1
        after, rollup = self.rollup_after_ns, self.rollup_window_ns
        # full-width windows: the horizon's, those of the rollup window it is in, and
        # one the pass has yet to see; rollup windows: those the retention spans beyond
        # the horizon, one at each edge
        return -(-after // window) + self.rollup_factor + 1 + -(-(retention - after) // rollup) + 1

    @property
    def rollup_factor(self) -> int:
        """Windows per rollup window; 0 when windows are never rolled up (rollup off, or
        the retention drops them first)."""
        if not 0 < self.rollup_after_ns < self.retention_ns:
            return 0
        return self.rollup_window_ns // self.window_ns


@dataclass(slots=True)
class _Series:
    # full-width windows by window id, and rollup windows by rollup id (the windows
    # r * factor ... r * factor + factor - 1 merged)
    windows: dict[int, Summary] = field(default_factory=dict)
    rollups: dict[int, Summary] = field(default_factory=dict)
    # the newest observation's time (any observation is newer than the start value:
    # times before 1970 are negative)
    last_time_ns: int = -(2**63)
    # the oldest id in ``windows`` and in ``rollups`` (None: none), so that passes skip
    # the series with nothing due quickly; and the newest window id
    oldest: int | None = None
    oldest_rollup: int | None = None
    newest: int | None = None

    def windows_removed(self) -> None:
        """Bring ``oldest`` and ``newest`` up to date after windows were taken out."""
        self.oldest = min(self.windows, default=None)
        if self.newest not in self.windows:
            self.newest = max(self.windows, default=None)

    def window_added(self, window_id: int) -> None:
        if self.oldest is None or window_id < self.oldest:
            self.oldest = window_id
        if self.newest is None or window_id > self.newest:
            self.newest = window_id

    def merge_into_rollup(self, rollup_id: int, parts: list[Summary]) -> None:
        """Merge ``parts`` and the rollup window held, if any, into rollup window
        ``rollup_id``, compacted. The parts are the caller's no more (a single one may
        become the rollup window itself)."""
        held = self.rollups.get(rollup_id)
        if held is not None:
            parts.append(held)
        merged = parts[0] if len(parts) == 1 else Summary.merge_all(parts)
        merged.compact()
        self.rollups[rollup_id] = merged
        if self.oldest_rollup is None or rollup_id < self.oldest_rollup:
            self.oldest_rollup = rollup_id


class WindowStore:
    """Per-series tumbling windows held in memory."""

    def __init__(
        self, config: WindowConfig | None = None, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.config = config or WindowConfig()
        self._clock = clock
        self._series: dict[SeriesKey, _Series] = {}
        self._label_sets: dict[str, int] = {}
        # bumped by every change, so callers can cache answers until it moves; and per
        # metric (the version of its last change, never reused: a metric's entry goes
        # with its last series, 0 meaning "no data"), so an answer about some metrics
        # lasts while those stay the same
        self.version = 0
        self._metric_versions: dict[str, int] = {}
        # windows changed since the last take_dirty(), for flushing to a store
        self._dirty: set[tuple[SeriesKey, int]] = set()
        # every window id up to this one is past the rollup horizon: observations for
        # them are refused, and restored ones go into rollup windows
        self._rolled_through: int | None = None

    # -- ingest ---------------------------------------------------------------------

    def check_times(self, batch: IngestBatch, now_ns: int) -> None:
        """Reject observations outside retention or too far in the future."""
        cfg = self.config
        oldest = self.oldest_accepted_ns(now_ns)
        newest = now_ns + cfg.max_future_ns
        ts = batch.timestamps_ns
        if ts is None:
            lo = hi = batch.time_ns
            lo_path = hi_path = "time"
        else:
            if ts.size == 0:
                return
            # the earliest and the latest, each named by its index (a large batch's
            # client can tell which observation it was)
            i_lo, i_hi = int(ts.argmin()), int(ts.argmax())
            lo, hi = int(ts[i_lo]), int(ts[i_hi])
            lo_path, hi_path = f"timestamps_unix_nano[{i_lo}]", f"timestamps_unix_nano[{i_hi}]"
        if lo < oldest:
            if cfg.rollup_factor:
                horizon = (
                    f"late-data horizon of {cfg.rollup_after_ns / NANOS:g} s (older windows "
                    f"are rolled up into {cfg.rollup_window_ns / NANOS:g}-second ones; "
                    "see --rollup-after)"
                )
            else:
                horizon = f"retention of {cfg.retention_ns / NANOS:g} s"
            raise InvalidArgument.single(
                lo_path,
                f"observation at Unix {lo / NANOS:.3f} is older than the node's {horizon} "
                f"(the oldest accepted: Unix {oldest / NANOS:.3f})",
            )
        if hi > newest:
            raise InvalidArgument.single(
                hi_path,
                f"observation at Unix {hi / NANOS:.3f} is more than "
                f"{cfg.max_future_ns / NANOS:g} s ahead of the node's clock",
            )

    def oldest_accepted_ns(self, now_ns: int) -> int:
        """The start of the oldest window an observation may land in now: the oldest
        window :meth:`evict_expired` keeps (with rollup, the oldest past the rollup
        horizon, if newer), all of it, also where the retention or the horizon is not a
        whole number of windows."""
        cfg = self.config
        start = self._window_start(now_ns)
        oldest = self._window_start(start - cfg.retention_ns) + cfg.window_ns
        if cfg.rollup_factor:
            oldest = max(oldest, self._window_start(start - cfg.rollup_after_ns) + cfg.window_ns)
        if self._rolled_through is not None:
            oldest = max(oldest, (self._rolled_through + 1) * cfg.window_ns)
        return oldest

    def check_capacity(self, keys: Iterable[SeriesKey]) -> None:
        """Raise RESOURCE_EXHAUSTED if these series would pass a cap; changes nothing."""
        new_per_metric: dict[str, int] = {}
        new_total = 0
        for key in set(keys):
            if key in self._series:
                continue
            new_total += 1
            new_per_metric[key.metric] = new_per_metric.get(key.metric, 0) + 1
        cap = self.config.max_label_sets_per_metric
        for metric, n in new_per_metric.items():
            if self._label_sets.get(metric, 0) + n > cap:
                raise ResourceExhausted(
                    message=(
                        f"metric {quoted(metric)} has reached its cap of {cap} label sets "
                        "(--max-label-sets)"
                    ),
                    reason="LABEL_CARDINALITY_EXCEEDED",
                    metadata={"metric": metric, "limit": str(cap)},
                    field_violations=(
                        FieldViolation(
                            "labels", f"too many label sets for metric {quoted(metric)}"
                        ),
                    ),
                )
        if len(self._series) + new_total > self.config.max_series:
            raise ResourceExhausted(
                message=(
                    f"the node holds its maximum of {self.config.max_series} series (--max-series)"
                ),
                reason="SERIES_LIMIT_EXCEEDED",
                metadata={"limit": str(self.config.max_series)},
            )

    def apply(self, batch: IngestBatch) -> None:
        """Apply a batch that passed validation, time and capacity checks."""
        if batch.values.size == 0:
            return
        series = self._series_of(batch.key)
        window_ns = self.config.window_ns
        if batch.timestamps_ns is None:
            window_id = batch.time_ns // window_ns
            self._update(batch.key, series, window_id, batch.values)
            newest = batch.time_ns
        else:
            ids = batch.timestamps_ns // window_ns
            first, last = int(ids.min()), int(ids.max())
            if first == last:
                self._update(batch.key, series, first, batch.values)
            else:
                order = np.argsort(ids, kind="stable")
                sorted_ids = ids[order]
                bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
                starts = np.concatenate(([0], bounds))
                ends = np.concatenate((bounds, [sorted_ids.size]))
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                    window_id = int(sorted_ids[s])
                    self._update(batch.key, series, window_id, batch.values[order[s:e]])
            newest = int(batch.timestamps_ns.max())
        series.last_time_ns = max(series.last_time_ns, newest)
        self._changed(batch.key.metric)

    def _changed(self, metric: str) -> None:
        self.version += 1
        self._metric_versions[metric] = self.version

    def version_of(self, metrics: frozenset[str]) -> int | tuple[int, ...]:
        """What changes whenever the data of ``metrics`` does (all metrics: empty)."""
        if not metrics:
            return self.version
        found = self._metric_versions
        return tuple(found.get(m, 0) for m in sorted(metrics))

    def _update(self, key: SeriesKey, series: _Series, window_id: int, values: np.ndarray) -> None:
        summary = self._window(series, window_id)
        summary.update(values)
        self._dirty.add((key, window_id))
        if series.newest is not None and window_id < series.newest:
            # late data for a closed window: the update widened its sketch's counts
            # again (about 8x the memory), and no newer window will shrink it
            summary.compact()

    def _window(self, series: _Series, window_id: int) -> Summary:
        summary = series.windows.get(window_id)
        if summary is None:
            newest = series.newest
            if newest is not None and newest < window_id:
                # the newest window so far is most likely closed now: shrink its sketch
                series.windows[newest].compact()
            summary = Summary(
                scale=self.config.histogram_scale, max_buckets=self.config.max_buckets
            )
            series.windows[window_id] = summary
            series.window_added(window_id)
        return summary

    # -- persistence ----------------------------------------------------------------

    def take_dirty(self) -> list[tuple[SeriesKey, int, Summary, int]]:
        """Windows changed since the last call: (series, window id, summary, newest time).

        The summaries are the live objects; serialise them before the next ingest."""
        out = []
        for key, window_id in self._dirty:
            series = self._series.get(key)
            if series is not None and window_id in series.windows:
                out.append((key, window_id, series.windows[window_id], series.last_time_ns))
        self._dirty.clear()
        return out

    def restore(self, key: SeriesKey, window_id: int, summary: Summary, newest_ns: int) -> None:
        """Merge a persisted window in (restart, or another instance's data): see
        :meth:`restore_many`."""
        self.restore_many([(key, window_id, summary, newest_ns)])

    def restore_many(self, windows: Iterable[tuple[SeriesKey, int, Summary, int]]) -> None:
        """Merge persisted windows in: (series, window id, summary, newest time) each.

        A window past the rollup horizon goes into its rollup window (those bound for one
        rollup window merge in one pass), unless the same window is held at full width
        (its newer data, not yet flushed). Not subject to the caps: what was persisted was
        admitted once already. Windows put in whole are compacted (as closed windows
        are): a decoded sketch's counts are 64-bit."""
        through = self._rolled_through
        factor = self.config.rollup_factor
        into_rollups: dict[tuple[SeriesKey, int], list[Summary]] = {}
        changed: set[str] = set()
        for key, window_id, summary, newest_ns in windows:
            series = self._series_of(key)
            held = series.windows.get(window_id)
            if held is not None:
                held.merge_from(summary)
            elif through is not None and window_id <= through:
                into_rollups.setdefault((key, window_id // factor), []).append(summary)
            else:
                summary.compact()  # a decoded sketch takes about 4.6x the memory
                series.windows[window_id] = summary
                series.window_added(window_id)
            series.last_time_ns = max(series.last_time_ns, newest_ns)
            changed.add(key.metric)
        for (key, rollup_id), parts in into_rollups.items():
            self._series[key].merge_into_rollup(rollup_id, parts)
        for metric in changed:
            self._changed(metric)

    def replace_many(self, windows: Sequence[tuple[SeriesKey, int, Summary, int]]) -> bool:
        """Put newer versions of persisted windows in, each replacing the one held whole
        (another instance flushed it again: the store replaced it whole too), or added
        when none is; (series, window id, summary, newest time) each, as for
        :meth:`restore_many`. Returns False, changing nothing, when one of them is past
        the rollup horizon: the version it replaces may be merged into a rollup window,
        and only a load from scratch takes it out."""
        through = self._rolled_through
        if through is not None and any(window_id <= through for _, window_id, _, _ in windows):
            return False
        changed: set[str] = set()
        for key, window_id, summary, newest_ns in windows:
            series = self._series_of(key)
            if window_id not in series.windows:
                series.window_added(window_id)
            summary.compact()
            series.windows[window_id] = summary
            series.last_time_ns = max(series.last_time_ns, newest_ns)
            changed.add(key.metric)
        for metric in changed:
            self._changed(metric)
        return True

    def _series_of(self, key: SeriesKey) -> _Series:
        """The series of ``key``, made if it is new (not subject to the caps)."""
        series = self._series.get(key)
        if series is None:
            series = _Series()
            self._series[key] = series
            self._label_sets[key.metric] = self._label_sets.get(key.metric, 0) + 1
        return series

    # -- queries --------------------------------------------------------------------

    def _window_start(self, t_ns: int) -> int:
        return (t_ns // self.config.window_ns) * self.config.window_ns

    def _window_ids(
        self, start_ns: int | None, end_ns: int | None
    ) -> tuple[int | None, int | None]:
        """The first and last window ids :meth:`summaries` merges for [start, end) (None:
        unbounded). Past the rollup horizon a rollup window counts whole, and so do the
        windows in it still held at full width (not flushed yet, or put back by a restore
        or a log replay): all or none of its data, whatever its resolution now."""
        window_ns = self.config.window_ns
        factor = self.config.rollup_factor
        # windows up to this id may be merged into rollup windows
        through = self._rolled_through if factor else None
        first = None if start_ns is None else start_ns // window_ns
        # a window [w*W, (w+1)*W) overlaps [start, end) when w*W < end
        last = None if end_ns is None else (end_ns - 1) // window_ns
        if through is not None:
            if first is not None and first <= through:
                first = (first // factor) * factor
            if last is not None and last <= through:
                last = (last // factor + 1) * factor - 1
        return first, last

    def window_starts(
        self, start_ns: int | None, end_ns: int | None
    ) -> tuple[int | None, int | None]:
        """A range holding the start of every window :meth:`summaries` merges for
        [start, end): the start widened to its window's (its rollup window's, where the
        windows there may be rolled up), the end to a rollup window's last window where
        it reaches one. None stays unbounded."""
        window_ns = self.config.window_ns
        first, last = self._window_ids(start_ns, end_ns)
        start = None if first is None else first * window_ns
        end = None if last is None or end_ns is None else max(end_ns, last * window_ns + 1)
        return start, end

    def summaries(self, query: SummaryQuery) -> list[GroupSummary]:
        """Merge the windows (and rollup windows) overlapping [start, end) per metric and
        label group; each group's range is that of the windows it merged, and its "data as
        of" time that of its newest observation, or, where the range leaves a series'
        newest window out, the end of the last window merged (none later is in them)."""
        window_ns = self.config.window_ns
        factor = self.config.rollup_factor
        first_id, last_id = self._window_ids(query.start_ns, query.end_ns)
        wanted = dict(query.label_filter)
        # per group: the windows to merge, and per series the first and last window id
        # covered and the newest observation
        parts: dict[tuple[str, Labels], tuple[list[Summary], list[int]]] = {}
        for key, series in self._series.items():
            if query.metrics and key.metric not in query.metrics:
                continue
            if wanted:
                have = dict(key.labels)
                if any(have.get(k) != v for k, v in wanted.items()):
                    continue
            ids = [
                w
                for w in series.windows
                if (first_id is None or w >= first_id) and (last_id is None or w <= last_id)
            ]
            rollup_ids = [
                r
                for r in series.rollups
                if (first_id is None or (r + 1) * factor > first_id)
                and (last_id is None or r * factor <= last_id)
            ]
            if not ids and not rollup_ids:
                continue
            lo = min(ids + [r * factor for r in rollup_ids])
            hi = max(ids + [(r + 1) * factor - 1 for r in rollup_ids])
            group_labels = tuple((k, v) for k, v in key.labels if k in query.group_by)
            summaries, bounds = parts.setdefault((key.metric, group_labels), ([], []))
            summaries.extend(series.windows[w] for w in ids)
            summaries.extend(series.rollups[r] for r in rollup_ids)
            # the series' newest observation, unless the range leaves its window out:
            # then the end of the last window merged (no newer observation is in it)
            bounds.extend((lo, hi, min(series.last_time_ns, (hi + 1) * window_ns - 1)))
        out = []
        for (metric, group), (summaries, bounds) in sorted(parts.items(), key=lambda kv: kv[0]):
            out.append(
                GroupSummary(
                    metric=metric,
                    labels=group,
                    summary=Summary.merge_all(summaries),
                    start_ns=min(bounds[0::3]) * window_ns,
                    end_ns=(max(bounds[1::3]) + 1) * window_ns,
                    data_as_of_ns=max(bounds[2::3]),
                )
            )
        return out

    # -- rollup and retention -------------------------------------------------------

    def roll_up(self, now_ns: int | None = None, limit: int | None = None) -> int:
        """Merge windows past the rollup horizon into their rollup windows; returns how
        many windows were merged.

        A rollup window is formed once every window in it is past the horizon, and a
        window waits while it is dirty (not flushed to the store yet). With ``limit``, it
        stops at the first rollup window after merging that many (call again while it
        returns ``limit`` or more), so a caller can let other work run in between."""
        factor = self.config.rollup_factor
        if not factor:
            return 0
        now = self._clock() if now_ns is None else now_ns
        horizon_id = self.oldest_accepted_ns(now) // self.config.window_ns
        # the newest rollup window whose windows are all older than the horizon
        through = (horizon_id // factor) * factor - 1
        if self._rolled_through is None or through > self._rolled_through:
            self._rolled_through = through
        merged = 0
        dirty = self._dirty
        for key, series in self._series.items():
            if limit is not None and merged >= limit:
                break
            if series.oldest is None or series.oldest > through:
                continue
            due: dict[int, list[int]] = {}
            for w in series.windows:
                if w <= through:
                    due.setdefault(w // factor, []).append(w)
            before = merged
            for rollup_id, ids in due.items():
                if limit is not None and merged >= limit:
                    break
                if any((key, w) in dirty for w in ids):
                    continue
                series.merge_into_rollup(rollup_id, [series.windows.pop(w) for w in ids])
                merged += len(ids)
            if merged != before:
                series.windows_removed()
                self._changed(key.metric)
        return merged

    def kept_from_id(self, now_ns: int) -> int:
        """The oldest window id whose data the node still holds (in a window or in a
        rollup window, which is kept until all of it is past retention)."""
        cfg = self.config
        first = (self._window_start(now_ns) - cfg.retention_ns) // cfg.window_ns + 1
        factor = cfg.rollup_factor
        return (first // factor) * factor if factor else first

    def evict_expired(self, now_ns: int | None = None) -> int:
        """Drop windows and rollup windows past retention, and series left empty; return
        how many were dropped."""
        now = self._clock() if now_ns is None else now_ns
        cutoff_id = (self._window_start(now) - self.config.retention_ns) // self.config.window_ns
        current_id = self._window_start(now) // self.config.window_ns
        factor = self.config.rollup_factor
        dropped = 0
        for key in list(self._series):
            series = self._series[key]
            newest = series.newest
            if newest is not None and newest < current_id:
                # a series gone quiet: its newest window is closed, and no newer one
                # came to shrink it (an update leaves its counts at 64 bits: ~8x)
                last = series.windows[newest]
                if not last.histogram.is_compact:
                    last.compact()
            old = []
            if series.oldest is not None and series.oldest <= cutoff_id:
                old = [w for w in series.windows if w <= cutoff_id]
                for w in old:
                    del series.windows[w]
                series.windows_removed()
            old_rollups = []
            # a rollup window goes once all of it is past retention
            if series.oldest_rollup is not None and (series.oldest_rollup + 1) * factor <= (
                cutoff_id + 1
            ):
                old_rollups = [r for r in series.rollups if (r + 1) * factor <= cutoff_id + 1]
                for r in old_rollups:
                    del series.rollups[r]
                series.oldest_rollup = min(series.rollups, default=None)
            dropped += len(old) + len(old_rollups)
            if old or old_rollups:
                self._changed(key.metric)
            if not series.windows and not series.rollups:
                del self._series[key]
                self._label_sets[key.metric] -= 1
                if self._label_sets[key.metric] == 0:
                    del self._label_sets[key.metric]
                    self._metric_versions.pop(key.metric, None)
        return dropped

    # -- introspection --------------------------------------------------------------

    @property
    def series_count(self) -> int:
        return len(self._series)

    @property
    def window_count(self) -> int:
        """Windows held, rollup windows included."""
        _, windows, rollups = self.held()
        return windows + rollups

    @property
    def rollup_count(self) -> int:
        """Rollup windows held."""
        return self.held()[2]

    def held(self) -> tuple[int, int, int]:
        """(series, full-width windows, rollup windows) held, in one pass.

        Safe from another thread (a metrics scrape runs on its exporter's): it walks a
        copy of the series, taken in one step, while the event loop adds and evicts."""
        windows = rollups = 0
        for s in list(self._series.values()):
            windows += len(s.windows)
            rollups += len(s.rollups)
        return len(self._series), windows, rollups
