"""Configuration of differentially private summary releases (validated on construction)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Final, Literal

from nethical_grpc.summary.exponential_histogram import (
    DEFAULT_MAX_BUCKETS,
    MAX_SCALE,
    MIN_SCALE,
    bucket_index,
)
from nethical_grpc.validation import MAX_ABS_VALUE

__all__ = ["MECHANISMS", "Mechanism", "PrivacyConfig"]

Mechanism = Literal["laplace", "geometric"]
MECHANISMS: Final[tuple[str, ...]] = ("laplace", "geometric")

#: Smallest epsilon of any part of a release (count, sum, histogram): noise of scale
#: 1 / epsilon beyond 1e6 counts overflows the integer samplers long before it is useful.
MIN_EPSILON_PART: Final = 1e-6
#: Largest min_count: counts are uint64 on the wire, so none reaches a larger one.
MAX_MIN_COUNT: Final = 2**64 - 1
#: Smallest positive normal double: the released zero bucket's width must stay above it.
_MIN_NORMAL: Final = 2.2250738585072014e-308


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_finite(name: str, value: object) -> float:
    """``value`` as a float when it is a real number (not a bool), finite and > 0;
    ``ValueError`` naming ``name`` otherwise."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0.0:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """What a region adds to a summary before it leaves, and how much it may release.

    Attributes:
        epsilon_per_release: epsilon one release spends on every window it covers; split
            between count, sum and histogram by ``epsilon_split`` (sequential composition).
        window_budget: total epsilon a window (a metric's or series' window, see
            :class:`~nethical_grpc.privacy.release.PrivateReleaser`) may spend over all
            releases; must be at least ``epsilon_per_release``.
        value_bound: ``B``: every observation is assumed to satisfy ``|x| <= B`` (``0 <= x <= B``
            when ``nonnegative``). The sum's sensitivity is ``B``; values beyond it void
            the guarantee for the sum unless clipped at ingest
            (:func:`~nethical_grpc.privacy.release.clip_to_bound`). Same unit as the metric.
        min_count: groups whose *noisy* count is below this are not released at all.
        mechanism: noise for counts, the zero bucket and histogram buckets: ``"laplace"``
            (continuous, rounded afterwards) or ``"geometric"`` (two-sided geometric,
            integer-valued). Sums always get Laplace noise.
        epsilon_split: fractions of ``epsilon_per_release`` for (count, sum, histogram);
            each > 0, summing to 1.
        nonnegative: observations are assumed ``>= 0``: no negative buckets are released and
            the public lower bound is 0 instead of ``-B``.
        histogram_scale: scale of the public bucket grid the histogram is released on
            (relative quantile error ``(2^(2^-s) - 1) / (2^(2^-s) + 1)``: 4.3% at 3, 2.2% at 4).
        histogram_octaves: the grid resolves magnitudes in ``(B * 2^-octaves, B]``; smaller
            magnitudes are released in the zero bucket.
        bucket_threshold: post-processing: noisy buckets below ``bucket_threshold`` times the
            bucket noise scale (``1 / epsilon_histogram``) are set to 0, so that the many
            empty buckets of the grid do not fill with noise. 0 keeps every bucket.
    """

    epsilon_per_release: float
    window_budget: float
    value_bound: float
    min_count: int = 10
    mechanism: Mechanism = "laplace"
    epsilon_split: tuple[float, float, float] = (0.25, 0.25, 0.5)
    nonnegative: bool = False
    histogram_scale: int = 3
    histogram_octaves: int = 16
    bucket_threshold: float = 3.0

    def __post_init__(self) -> None:
        eps = positive_finite("epsilon_per_release", self.epsilon_per_release)
        budget = positive_finite("window_budget", self.window_budget)
        if budget < eps:
            raise ValueError(
                f"window_budget ({budget:g}) must be at least epsilon_per_release ({eps:g}), "
                "or no release could ever be made"
            )
        bound = positive_finite("value_bound", self.value_bound)
        if bound > MAX_ABS_VALUE:
            raise ValueError(f"value_bound must be at most {MAX_ABS_VALUE:g}, got {bound:g}")
        if not _is_int(self.min_count) or not (0 <= int(self.min_count) <= MAX_MIN_COUNT):
            raise ValueError(
                f"min_count must be an integer in [0, {MAX_MIN_COUNT}] (a count's range), "
                f"got {self.min_count!r}"
            )
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        self._check_split()
        for name, part in zip(("count", "sum", "histogram"), self.epsilon_split, strict=True):
            if eps * float(part) < MIN_EPSILON_PART:
                raise ValueError(
                    f"epsilon for the {name} ({eps * float(part):g}) is below "
                    f"{MIN_EPSILON_PART:g}: its noise would be too large to represent "
                    "(and to be of any use)"
                )
        if not isinstance(self.nonnegative, bool):
            raise ValueError(f"nonnegative must be a bool, got {self.nonnegative!r}")
        self._check_grid(bound)
        t = self.bucket_threshold
        if not _is_real(t) or not math.isfinite(float(t)) or float(t) < 0.0:
            raise ValueError(f"bucket_threshold must be a finite number >= 0, got {t!r}")

    def _check_split(self) -> None:
        split = self.epsilon_split
        if not isinstance(split, tuple) or len(split) != 3:
            raise ValueError(f"epsilon_split must be a tuple of 3 fractions, got {split!r}")
        for name, part in zip(("count", "sum", "histogram"), split, strict=True):
            positive_finite(f"epsilon_split[{name}]", part)
        if abs(math.fsum(float(p) for p in split) - 1.0) > 1e-9:
            raise ValueError(f"epsilon_split must sum to 1, got {split!r}")

    def _check_grid(self, bound: float) -> None:
        s, octaves = self.histogram_scale, self.histogram_octaves
        if not _is_int(s) or not (MIN_SCALE <= int(s) <= MAX_SCALE):
            raise ValueError(
                f"histogram_scale must be an integer in [{MIN_SCALE}, {MAX_SCALE}], got {s!r}"
            )
        if not _is_int(octaves) or int(octaves) < 1:
            raise ValueError(f"histogram_octaves must be an integer >= 1, got {octaves!r}")
        # cells per side: about octaves * 2^scale, plus one for rounding at either end
        if math.ldexp(float(octaves), int(s)) + 2 > DEFAULT_MAX_BUCKETS:
            raise ValueError(
                f"histogram_octaves * 2^histogram_scale = {math.ldexp(float(octaves), int(s)):g} "
                f"buckets: must leave the grid within {DEFAULT_MAX_BUCKETS - 2} buckets per sign"
            )
        floor = math.ldexp(bound, -int(octaves))
        if floor < _MIN_NORMAL:
            # the most octaves n with bound * 2^-n >= 2^-1022 (bound = m * 2^e, m in [0.5, 1))
            fits = math.frexp(bound)[1] + 1021
            if fits < 1:  # no octave count fits: it is the bound
                raise ValueError(
                    f"value_bound must be at least {2.0 * _MIN_NORMAL:g}, got {bound:g}"
                )
            try:
                least = math.ldexp(_MIN_NORMAL, int(octaves))
            except OverflowError:
                least = math.inf
            instead = f", or a value_bound of at least {least!r}" if least <= MAX_ABS_VALUE else ""
            raise ValueError(
                f"value_bound {bound:g} * 2^-{octaves} (histogram_octaves) underflows: use at "
                f"most {fits} octaves{instead}"
            )
        # the grid's cells are the buckets of (floor, bound]: at a coarse scale there may be
        # none, and every value would be released in the zero bucket
        if bucket_index(bound, int(s)) <= bucket_index(floor, int(s)):
            raise ValueError(
                f"histogram_scale {s} is too coarse for {octaves} octaves: the released "
                "histogram would have no bucket but the zero bucket; raise histogram_scale "
                "or histogram_octaves"
            )

    # ---------------------------------------------------------------- derived values

    @property
    def epsilon_count(self) -> float:
        """Epsilon of the count (and of the suppression decision, which uses it)."""
        return self.epsilon_per_release * self.epsilon_split[0]

    @property
    def epsilon_sum(self) -> float:
        return self.epsilon_per_release * self.epsilon_split[1]

    @property
    def epsilon_histogram(self) -> float:
        """Epsilon of the whole bucket vector (zero bucket included): L1 sensitivity 1."""
        return self.epsilon_per_release * self.epsilon_split[2]

    @property
    def lower_bound(self) -> float:
        """Public lower bound of an observation: ``0`` or ``-value_bound``."""
        return 0.0 if self.nonnegative else -float(self.value_bound)

    @property
    def upper_bound(self) -> float:
        return float(self.value_bound)

    @property
    def zero_below(self) -> float:
        """Magnitudes below this (``value_bound * 2^-histogram_octaves``) are released in
        the zero bucket, and set to 0 at ingest."""
        return math.ldexp(float(self.value_bound), -int(self.histogram_octaves))
