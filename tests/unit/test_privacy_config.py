"""PrivacyConfig validation and derived figures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from nethical_grpc.privacy import (
    MAX_PRESENCE_DELTA,
    BucketGrid,
    PrivacyConfig,
    clip_to_bound,
    min_count_for_delta,
    presence_delta,
)
from nethical_grpc.summary import Summary


def make(**overrides: Any) -> PrivacyConfig:
    fields: dict[str, Any] = {"epsilon_per_release": 1.0, "window_budget": 5.0, "value_bound": 1.0}
    fields.update(overrides)
    return PrivacyConfig(**fields)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epsilon_per_release": 0.0}, "epsilon_per_release must be a finite number > 0"),
        ({"epsilon_per_release": -1.0}, "epsilon_per_release"),
        ({"epsilon_per_release": math.nan}, "epsilon_per_release"),
        ({"epsilon_per_release": math.inf}, "epsilon_per_release"),
        ({"epsilon_per_release": True}, "epsilon_per_release"),
        ({"window_budget": 0.5}, "window_budget .* must be at least epsilon_per_release"),
        ({"window_budget": math.inf}, "window_budget"),
        ({"value_bound": 0.0}, "value_bound"),
        ({"value_bound": 1e101}, "value_bound must be at most"),
        ({"min_count": -1}, "min_count"),
        ({"min_count": 2.5}, "min_count"),
        ({"min_count": True}, "min_count"),
        ({"mechanism": "gaussian"}, "mechanism must be one of"),
        ({"epsilon_split": (0.5, 0.5)}, "epsilon_split must be a tuple of 3"),
        ({"epsilon_split": (0.5, 0.5, 0.5)}, "epsilon_split must sum to 1"),
        ({"epsilon_split": (0.0, 0.5, 0.5)}, r"epsilon_split\[count\]"),
        ({"nonnegative": 1}, "nonnegative must be a bool"),
        ({"histogram_scale": 21}, "histogram_scale"),
        ({"histogram_octaves": 0}, "histogram_octaves"),
        ({"histogram_scale": 8, "histogram_octaves": 16}, "buckets per sign"),
        ({"histogram_octaves": 1100, "histogram_scale": 0}, "underflows"),
        ({"bucket_threshold": -1.0}, "bucket_threshold"),
    ],
)
def test_invalid_settings_raise_value_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_epsilon_is_split_between_count_sum_and_histogram() -> None:
    c = make(epsilon_per_release=2.0, epsilon_split=(0.5, 0.25, 0.25))
    assert c.epsilon_count == pytest.approx(1.0)
    assert c.epsilon_sum == pytest.approx(0.5)
    assert c.epsilon_histogram == pytest.approx(0.5)
    assert c.epsilon_count + c.epsilon_sum + c.epsilon_histogram == pytest.approx(2.0)


def test_public_bounds_follow_nonnegative() -> None:
    assert (make(value_bound=3.0).lower_bound, make(value_bound=3.0).upper_bound) == (-3.0, 3.0)
    assert make(value_bound=3.0, nonnegative=True).lower_bound == 0.0


def test_grid_covers_the_configured_octaves() -> None:
    g = BucketGrid.from_config(make(value_bound=100.0, histogram_scale=2, histogram_octaves=10))
    assert g.cells_per_side == 10 * 4
    assert g.size == 2 * 40 + 1
    assert g.zero_threshold == pytest.approx(100.0 * 2.0**-10, rel=0.2)
    nonneg = BucketGrid.from_config(make(nonnegative=True))
    assert nonneg.size == nonneg.cells_per_side + 1


def test_presence_delta_shrinks_with_min_count() -> None:
    deltas = [presence_delta(make(min_count=t)) for t in (0, 1, 5, 20, 50)]
    assert deltas == sorted(deltas, reverse=True)
    # Laplace(1/0.25): P(Z >= 48.5) = 0.5 * exp(-48.5 * 0.25)
    assert deltas[-1] == pytest.approx(0.5 * math.exp(-48.5 * 0.25))
    geo = presence_delta(make(min_count=50, mechanism="geometric"))
    a = math.exp(-0.25)
    assert geo == pytest.approx(a**49 / (1 + a))


def test_min_count_zero_releases_every_group() -> None:
    assert presence_delta(make(min_count=0)) == 1.0
    assert presence_delta(make(min_count=0, mechanism="geometric")) == 1.0


@pytest.mark.parametrize("mechanism", ["laplace", "geometric"])
@pytest.mark.parametrize("eps", [0.05, 0.5, 4.0])
def test_min_count_for_delta_is_the_smallest_that_meets_it(mechanism: str, eps: float) -> None:
    cfg = make(epsilon_per_release=eps, window_budget=10 * eps, mechanism=mechanism)
    t = min_count_for_delta(cfg)
    assert presence_delta(make(**{**_fields(cfg), "min_count": t})) <= MAX_PRESENCE_DELTA
    assert presence_delta(make(**{**_fields(cfg), "min_count": t - 1})) > MAX_PRESENCE_DELTA


def _fields(cfg: PrivacyConfig) -> dict[str, Any]:
    return {
        "epsilon_per_release": cfg.epsilon_per_release,
        "window_budget": cfg.window_budget,
        "mechanism": cfg.mechanism,
    }


@pytest.mark.parametrize("eps", [1e-19, 1e-7])
def test_an_epsilon_too_small_to_sample_is_refused(eps: float) -> None:
    """Noise of scale 1e19 overflowed the integer samplers: the geometric one then
    released exact counts."""
    with pytest.raises(ValueError, match="too large to represent"):
        make(epsilon_per_release=eps, window_budget=eps)


def test_tiny_values_are_set_to_zero_at_ingest_so_the_histogram_keeps_its_range() -> None:
    cfg = make(value_bound=100.0, nonnegative=True)
    values = np.array([1e-300, 5e-324, cfg.zero_below / 2, cfg.zero_below, 50.0, 150.0])
    clipped = clip_to_bound(values, cfg)
    assert clipped.tolist() == [0.0, 0.0, 0.0, cfg.zero_below, 50.0, 100.0]
    base = np.linspace(1.0, 100.0, 500)
    without = Summary.from_values(clip_to_bound(base, cfg))
    with_tiny = Summary.from_values(clip_to_bound(np.append(base, 1e-300), cfg))
    # one tiny observation no longer rescales the window's histogram (it used to drop it
    # from scale 6 to scale 1, moving every bucket)
    assert with_tiny.histogram.scale == without.histogram.scale
    assert with_tiny.histogram.zero_count == without.histogram.zero_count + 1
