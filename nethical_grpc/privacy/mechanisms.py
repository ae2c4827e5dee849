"""Noise mechanisms (Laplace, two-sided geometric) and their error figures.

Every sampler draws uniforms and transforms them by the inverse CDF, vectorised:

* ``rng`` given (a seeded ``numpy.random.Generator``): reproducible, for tests and
  simulations. A generator seeded with :func:`secure_generator` is unpredictable but
  PCG64 is not a cryptographic generator.
* ``rng=None`` (the default everywhere): 52-bit uniforms from ``os.urandom``, the operating
  system's cryptographic generator, so the noise cannot be predicted or subtracted.

Floating-point Laplace noise has a known weakness (Mironov, CCS 2012): the low-order bits of
``x + noise`` can reveal ``x``. Counts and buckets are rounded to integers after noising
and the geometric mechanism avoids it altogether for them; noisy sums are not snapped, which
is a documented limitation of this implementation.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "NoiseError",
    "combine_errors",
    "geometric_error",
    "geometric_noise",
    "laplace_error",
    "laplace_noise",
    "mean_error",
    "secure_generator",
    "uniform_open",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_UINT64_MAX: int = 2**64 - 1
_SQRT2: float = math.sqrt(2.0)
_SQRT_2_OVER_PI: float = math.sqrt(2.0 / math.pi)


def secure_generator() -> np.random.Generator:
    """A PCG64 generator seeded with 128 bits from :mod:`secrets` (fast; not a CSPRNG)."""
    return np.random.default_rng(secrets.randbits(128))


def uniform_open(size: int, rng: np.random.Generator | None = None) -> FloatArray:
    """``size`` uniforms in the open interval (0, 1), 52 random bits each.

    ``rng=None`` reads ``os.urandom``; otherwise ``rng`` supplies 64-bit words (of any bit
    generator, 32-bit ones such as MT19937 included).
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if rng is None:
        bits = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
    else:
        # 64-bit words whatever the bit generator (MT19937's raw outputs are 32 bits);
        # for 64-bit generators (PCG64, ...) these are exactly their raw outputs
        bits = rng.integers(0, _UINT64_MAX, size=size, dtype=np.uint64, endpoint=True)
    # (k + 0.5) / 2^52 for k in [0, 2^52): exact in float64, never 0, never 1
    return ((bits >> np.uint64(12)).astype(np.float64) + 0.5) * (2.0**-52)


def laplace_noise(scale: float, size: int, rng: np.random.Generator | None = None) -> FloatArray:
    """``size`` draws of Laplace(0, ``scale``): density ``exp(-|x| / scale) / (2 scale)``.

    For sensitivity ``d`` and privacy ``epsilon`` use ``scale = d / epsilon``.
    """
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"Laplace scale must be a finite number > 0, got {scale!r}")
    u = uniform_open(size, rng)
    # inverse CDF: u < 1/2 -> scale * ln(2u) (negative), else -scale * ln(2 - 2u);
    # 1 - u is exact for u >= 1/2, so both tails keep full precision
    tail = np.log(2.0 * np.minimum(u, 1.0 - u))
    out: FloatArray = np.copysign(tail, u - 0.5)
    out *= scale
    return out


def geometric_noise(epsilon: float, size: int, rng: np.random.Generator | None = None) -> IntArray:
    """``size`` draws of the two-sided geometric distribution for sensitivity 1.

    ``P(K = k) = (1 - a) / (1 + a) * a^|k|`` with ``a = exp(-epsilon)``: the discrete
    Laplace, epsilon-DP for integer queries of sensitivity 1. Sampled as the difference of
    two one-sided geometrics ``floor(-ln U / epsilon)``.
    """
    if not (math.isfinite(epsilon) and epsilon > 0.0):
        raise ValueError(f"geometric epsilon must be a finite number > 0, got {epsilon!r}")
    u = uniform_open(2 * size, rng)
    g = np.floor(-np.log(u) / epsilon).astype(np.int64)
    result: IntArray = g[:size] - g[size:]
    return result


@dataclass(frozen=True, slots=True)
class NoiseError:
    """Size of an additive zero-mean noise: its standard deviation and ``E|noise|``.

    Same unit as the noised quantity (observations for counts, the metric's unit for sums).
    """

    stddev: float
    expected_abs: float

    @classmethod
    def zero(cls) -> NoiseError:
        return cls(0.0, 0.0)


def laplace_error(scale: float) -> NoiseError:
    """Laplace(``scale``): ``E|X| = scale``, standard deviation ``sqrt(2) * scale``."""
    return NoiseError(stddev=_SQRT2 * scale, expected_abs=scale)


def geometric_error(epsilon: float) -> NoiseError:
    """Two-sided geometric with ``a = exp(-epsilon)``.

    ``E|K| = 2a / (1 - a^2)`` and ``Var K = 2a / (1 - a)^2``.
    """
    a = math.exp(-epsilon)
    one_minus_a = -math.expm1(-epsilon)
    return NoiseError(
        stddev=math.sqrt(2.0 * a) / one_minus_a,
        expected_abs=2.0 * a / (one_minus_a * (1.0 + a)),
    )


def combine_errors(errors: Iterable[NoiseError]) -> NoiseError:
    """Error of the sum of independent noises, e.g. regions' noisy counts merged.

    Variances add, so ``stddev`` is exact. ``expected_abs`` is exact for zero or one
    term; for more it is the normal approximation ``stddev * sqrt(2 / pi)`` (for two equal
    Laplace terms that is 1.60 b against the exact 1.5 b, and it becomes exact as terms are
    added), never more than the sum of the terms' ``expected_abs``.
    """
    parts = list(errors)
    if not parts:
        return NoiseError.zero()
    if len(parts) == 1:
        return parts[0]
    stddev = math.sqrt(math.fsum(e.stddev * e.stddev for e in parts))
    bound = math.fsum(e.expected_abs for e in parts)
    return NoiseError(stddev=stddev, expected_abs=min(stddev * _SQRT_2_OVER_PI, bound))


def mean_error(count: float, mean: float, count_error: NoiseError, sum_error: NoiseError) -> float:
    """First-order bound on ``E|noisy mean - true mean|`` for ``mean = sum / count``.

    ``(E|sum noise| + |mean| * E|count noise|) / count`` (the delta method's linear term,
    with the triangle inequality); meaningful when ``count`` is large against the count
    noise. ``count`` and ``mean`` are the released (noisy) figures; ``inf`` when
    ``count <= 0``.
    """
    if not count > 0:
        return math.inf
    return (sum_error.expected_abs + abs(mean) * count_error.expected_abs) / count
