"""Optional differential privacy for the summaries a region sends out.

What is protected
-----------------
Event-level differential privacy: two datasets are neighbours when they differ by one
observation (one value of one series, added or removed). An agent that contributes many
observations is protected only as much as ``k`` observations are (``k * epsilon``);
bound contributions per agent upstream for user-level privacy.

What a release contains (:func:`release.noise_summary`)
------------------------------------------------------
``epsilon_per_release`` is split between count, sum and histogram (``epsilon_split``,
default 1/4, 1/4, 1/2); by sequential composition the release is
``epsilon_per_release``-DP for its groups, plus the small ``delta`` of suppression below.

* **count**: sensitivity 1; Laplace(``1/eps_c``) rounded, or the two-sided geometric
  mechanism (``mechanism="geometric"``), clamped at 0.
* **sum**: sensitivity ``B = value_bound`` (``|x| <= B`` is an assumption; see below);
  Laplace(``B/eps_s``), clamped to ``[count * lo, count * hi]`` (lo, hi: the public bounds
  ``-B`` or ``0``, and ``B``). The mean is ``sum / count`` of the noisy figures.
* **histogram**: projected onto a public grid (:mod:`.grid`) fixed by the configuration,
  so neither the set of occupied buckets nor the data-dependent scale leaks. One
  observation lands in one cell, so the cell vector has L1 sensitivity 1 and every cell,
  the zero cell included, gets independent Laplace(``1/eps_h``) (or geometric) noise.
* **min/max are not differentially private** and are withheld: they are replaced by the
  public bounds ``lo``/``hi``, which say nothing about the data. (NaN would be the obvious
  "withheld", but it fails ``Moments.validate`` on the wire and turns every quantile into
  NaN, since quantiles are clamped to ``[min, max]``.) A released count of 1 sets both to
  the released mean, as a single value requires.
* **m2** (variance) is not noised separately: it is computed from the released histogram
  around the released mean, which is post-processing and costs no budget.

Post-processing (free under DP): counts and cells are rounded and clamped at 0; cells
below ``bucket_threshold / eps_h`` are zeroed so the grid's many empty cells do not fill
with noise; the cells are then rescaled (largest remainder) to add up to the noisy count
exactly, so ``moments.count == histogram.count``, the summary validates, merges with
``Summary.merge`` and answers quantiles (clamped to the public bounds).

Minimum-count suppression
-------------------------
A group whose **noisy** count is below ``min_count`` is not released (nor counted: the
number of suppressed groups would reveal which groups hold any data). Thresholding the
true count would make the decision itself leak; thresholding the noisy count leaves one
leak: a group that exists only because of one observation is released with probability
``delta = P(noisy count of 1 >= min_count)`` (:func:`release.presence_delta`), so each
release is (epsilon, delta)-DP. Choose ``min_count`` so that delta is small (with
Laplace and ``eps_c = 0.25``, min_count 50 gives delta ~ 3e-6).

Budget (:mod:`.budget`)
-----------------------
An accountant keyed by (series, window id): a release spends ``epsilon_per_release`` from
each window it covers (parallel composition across disjoint windows, sequential within a
window) and is refused with :class:`PrivacyBudgetExhausted` (RESOURCE_EXHAUSTED) when any
covered window would pass ``window_budget``; nothing is charged then. With the default
``"metric"`` granularity the key is ``(SeriesKey(metric, ()), window id)``: any group of a
metric charges the metric's windows, which over-charges label-disjoint queries but needs
nothing beyond what a :class:`~nethical_grpc.series.GroupSummary` carries.
:class:`PrivateReleaser` caches each answer per (query normalised to window ids, data
version): asking the same thing again returns the same noise and spends nothing, so
repeating a query cannot average the noise away (the cache is bounded by answers and by
their estimated memory, ``cache_bytes``; an answer evicted and asked again is noised and
charged afresh). A release is noised first and charged
only when the caller sends it (``prepare``, then ``commit``): an answer refused as too
large spends nothing, and is kept, uncharged, so that asking again gets the same noise.

Assumptions and limits
----------------------
* ``|x| <= B`` for every observation (``0 <= x <= B`` with ``nonnegative``). Values past it
  void the sum's guarantee; the histogram stays private (they fold into the top cell).
  :func:`release.clip_to_bound` clips at ingest, the recommended wiring; a group whose
  true min/max lies outside the bound (windows restored from data written without
  privacy) is left out of the release, counted in ``bound_violations`` and logged
  in-region.
* Which (metric, window) pairs and which label groups hold data is treated as public
  (group presence is protected only by the suppression delta).
* Budgets live in memory (snapshot/restore to persist them; a region node saves them
  beside its write-ahead log, see ``region_node.privacy_accounts``). Instances that share a region
  store each keep their own accountant, so ``n`` such instances allow ``n`` times the
  budget unless the accounts are shared.
* Noise comes from ``os.urandom`` unless a seeded generator is passed (tests). Noisy sums
  are floating point and not snapped (Mironov 2012); counts and buckets are integers.

Expected error
--------------
:class:`ReleaseInfo` carries the noise's standard deviation and expected absolute error for
count (``1/eps_c`` for Laplace), sum (``B/eps_s``) and each bucket;
:class:`ReleasedGroup` adds a first-order bound on the mean's error. When the coordinator
merges several regions' noised summaries the noises are independent: variances add
(:func:`mechanisms.combine_errors`), and :func:`mechanisms.mean_error` bounds the merged
mean's error from the combined ones; :func:`release.merged_error` does both from the
regions' :class:`ReleaseInfo`.
"""

from nethical_grpc.privacy.budget import BudgetKey, PrivacyAccountant, PrivacyBudgetExhausted
from nethical_grpc.privacy.config import MECHANISMS, Mechanism, PrivacyConfig
from nethical_grpc.privacy.grid import BucketGrid
from nethical_grpc.privacy.mechanisms import (
    NoiseError,
    combine_errors,
    geometric_error,
    geometric_noise,
    laplace_error,
    laplace_noise,
    mean_error,
    secure_generator,
)
from nethical_grpc.privacy.release import (
    MAX_PRESENCE_DELTA,
    Granularity,
    MergedError,
    PendingRelease,
    PrivateRelease,
    PrivateReleaser,
    ReleasedGroup,
    ReleaseInfo,
    clip_to_bound,
    merged_error,
    min_count_for_delta,
    noise_cells,
    noise_summary,
    presence_delta,
)

__all__ = [
    "MAX_PRESENCE_DELTA",
    "MECHANISMS",
    "BucketGrid",
    "BudgetKey",
    "Granularity",
    "Mechanism",
    "MergedError",
    "NoiseError",
    "PendingRelease",
    "PrivacyAccountant",
    "PrivacyBudgetExhausted",
    "PrivacyConfig",
    "PrivateRelease",
    "PrivateReleaser",
    "ReleaseInfo",
    "ReleasedGroup",
    "clip_to_bound",
    "combine_errors",
    "geometric_error",
    "geometric_noise",
    "laplace_error",
    "laplace_noise",
    "mean_error",
    "merged_error",
    "min_count_for_delta",
    "noise_cells",
    "noise_summary",
    "presence_delta",
    "secure_generator",
]
