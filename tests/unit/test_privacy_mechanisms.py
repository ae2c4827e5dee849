"""Noise mechanisms: distribution and scale (large-sample checks with fixed seeds), errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.privacy import (
    NoiseError,
    combine_errors,
    geometric_error,
    geometric_noise,
    laplace_error,
    laplace_noise,
    mean_error,
    secure_generator,
)
from nethical_grpc.privacy.mechanisms import uniform_open

DRAWS = 20_000


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 4.0])
def test_laplace_scale_matches_one_over_epsilon(epsilon: float) -> None:
    rng = np.random.default_rng(1234)
    x = laplace_noise(1.0 / epsilon, DRAWS, rng)
    b = 1.0 / epsilon
    assert x.shape == (DRAWS,)
    assert abs(float(np.mean(np.abs(x))) / b - 1.0) < 0.10
    assert abs(float(np.std(x)) / (math.sqrt(2.0) * b) - 1.0) < 0.10
    assert abs(float(np.mean(x))) < 0.05 * b  # centred (std of the mean: 0.01 b)
    # tail: P(|X| > 2b) = exp(-2) = 0.135
    assert abs(float(np.mean(np.abs(x) > 2.0 * b)) - math.exp(-2.0)) < 0.015
    assert abs(float(np.mean(x > 0.0)) - 0.5) < 0.02


def test_laplace_from_the_os_generator_has_the_right_scale() -> None:
    x = laplace_noise(2.0, DRAWS)  # os.urandom: not reproducible, 14 sigma of slack
    assert abs(float(np.mean(np.abs(x))) / 2.0 - 1.0) < 0.10
    assert not np.array_equal(x, laplace_noise(2.0, DRAWS))


def test_seeded_noise_is_reproducible_and_secure_generator_is_not_fixed() -> None:
    a = laplace_noise(1.0, 100, np.random.default_rng(7))
    b = laplace_noise(1.0, 100, np.random.default_rng(7))
    assert np.array_equal(a, b)
    c = laplace_noise(1.0, 100, secure_generator())
    d = laplace_noise(1.0, 100, secure_generator())
    assert not np.array_equal(c, d)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 2.0])
def test_geometric_noise_matches_the_discrete_laplace(epsilon: float) -> None:
    rng = np.random.default_rng(99)
    k = geometric_noise(epsilon, DRAWS, rng)
    assert k.dtype == np.int64
    err = geometric_error(epsilon)
    assert abs(float(np.mean(np.abs(k))) / err.expected_abs - 1.0) < 0.10
    assert abs(float(np.std(k)) / err.stddev - 1.0) < 0.10
    a = math.exp(-epsilon)
    assert abs(float(np.mean(k == 0)) - (1.0 - a) / (1.0 + a)) < 0.015
    assert abs(float(np.mean(k))) < 0.05 * err.stddev


def test_geometric_error_approaches_laplace_for_small_epsilon() -> None:
    g = geometric_error(0.01)
    lap = laplace_error(100.0)
    assert g.expected_abs == pytest.approx(lap.expected_abs, rel=1e-3)
    assert g.stddev == pytest.approx(lap.stddev, rel=1e-2)


def test_uniform_open_never_hits_the_ends() -> None:
    u = uniform_open(50_000, np.random.default_rng(3))
    assert float(u.min()) > 0.0
    assert float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert uniform_open(0).shape == (0,)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_mechanisms_reject_bad_parameters(bad: float) -> None:
    with pytest.raises(ValueError, match="Laplace scale"):
        laplace_noise(bad, 3)
    with pytest.raises(ValueError, match="geometric epsilon"):
        geometric_noise(bad, 3)


def test_combined_error_of_independent_noises_matches_their_sum() -> None:
    rng = np.random.default_rng(5)
    scales = [1.0, 2.0, 0.5]
    total = sum(laplace_noise(b, DRAWS, rng) for b in scales)
    err = combine_errors(laplace_error(b) for b in scales)
    assert err.stddev == pytest.approx(math.sqrt(sum(2 * b * b for b in scales)))
    assert abs(float(np.std(total)) / err.stddev - 1.0) < 0.05
    # normal approximation of E|sum|: documented as within ~7% for few terms
    assert abs(float(np.mean(np.abs(total))) / err.expected_abs - 1.0) < 0.10


def test_combine_errors_edge_cases() -> None:
    assert combine_errors([]) == NoiseError(0.0, 0.0)
    one = laplace_error(3.0)
    assert combine_errors([one]) == one  # exact for one term


@given(st.lists(st.floats(0.01, 100.0), min_size=2, max_size=20))
@settings(max_examples=50, deadline=None)
def test_combined_expected_abs_never_exceeds_the_sum_of_parts(scales: list[float]) -> None:
    parts = [laplace_error(b) for b in scales]
    err = combine_errors(parts)
    assert err.expected_abs <= sum(p.expected_abs for p in parts) * (1 + 1e-12)
    assert err.expected_abs <= err.stddev
    assert err.stddev >= max(p.stddev for p in parts)


def test_mean_error_first_order_bound() -> None:
    count_err, sum_err = laplace_error(4.0), laplace_error(8.0)
    assert mean_error(100, 0.5, count_err, sum_err) == pytest.approx((8.0 + 0.5 * 4.0) / 100)
    assert mean_error(0, 0.5, count_err, sum_err) == math.inf
