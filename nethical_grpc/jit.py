"""Optional Numba JIT support.

Whether JIT compilation is used is decided exactly once, at import time:

* numba must be importable, and
* the environment variable ``NETHICAL_DISABLE_JIT`` must not be ``1``, ``true`` or ``yes``
  (case-insensitive).

Modules that have a compiled and a pure-NumPy implementation of a kernel call
:func:`is_jit_available` once at import and bind the implementation they will use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = [
    "DISABLE_ENV_VAR",
    "bits_float",
    "float_bits",
    "is_jit_available",
    "jit_unavailable_reason",
    "maybe_njit",
]

F = TypeVar("F", bound=Callable[..., Any])

DISABLE_ENV_VAR: Final = "NETHICAL_DISABLE_JIT"
_TRUTHY: Final = frozenset({"1", "true", "yes"})

log = logging.getLogger(__name__)


def _probe() -> tuple[Any, str | None]:
    """Return ``(numba_module_or_None, reason_if_unavailable)``."""
    raw = os.environ.get(DISABLE_ENV_VAR, "")
    if raw.strip().lower() in _TRUTHY:
        return None, f"disabled by {DISABLE_ENV_VAR}={raw.strip()}"
    try:
        import numba
    except ImportError:
        return None, "numba not installed"
    except Exception as exc:  # a broken install (e.g. llvmlite mismatch) must not be fatal
        return None, f"numba import failed: {type(exc).__name__}: {exc}"
    return numba, None


_NUMBA, _REASON = _probe()


def is_jit_available() -> bool:
    """True when numba imported successfully and JIT was not disabled by the environment."""
    return _NUMBA is not None


def jit_unavailable_reason() -> str | None:
    """Why JIT is not in use, or ``None`` when it is available."""
    return _REASON


def _identity(fn: F) -> F:
    return fn


def maybe_njit(**options: Any) -> Callable[[F], F]:
    """Decorator factory: ``numba.njit(nogil=True, cache=True, **options)`` or the identity.

    When JIT is unavailable the decorated function stays a plain Python function, so it is
    still callable (slowly) and the pure-Python semantics are identical.

    Numba refuses ``cache=True`` (``RuntimeError`` at decoration, i.e. at import) when it
    finds no writable cache directory: a read-only install without a writable
    ``NUMBA_CACHE_DIR`` or home.  The function is then compiled without the on-disk cache
    (at first call in every process) instead of failing the import.
    """
    numba = _NUMBA
    if numba is None:
        return _identity
    merged: dict[str, Any] = {"nogil": True, "cache": True}
    merged.update(options)

    def decorate(fn: F) -> F:
        try:
            compiled: F = numba.njit(**merged)(fn)
        except RuntimeError as exc:
            if not merged["cache"]:
                raise
            _note_no_cache(exc)
            compiled = numba.njit(**{**merged, "cache": False})(fn)
        return compiled

    return decorate


_cache_warned = False


def _note_no_cache(exc: BaseException) -> None:
    global _cache_warned
    if not _cache_warned:
        _cache_warned = True
        log.warning("numba on-disk cache unavailable, kernels compile in every process: %s", exc)


def _bits_helpers() -> tuple[Callable[[float], int], Callable[[int], float]]:
    """``(float_bits, bits_float)``: reinterpret a float64 as int64 and back.

    Compiled kernels need the bit patterns to build powers of two without a branch; under
    Numba these are LLVM bitcasts (free, and they vectorise), otherwise ``struct`` does it.
    """
    if _NUMBA is None:
        import struct

        pack_d, unpack_q = struct.Struct("<d").pack, struct.Struct("<q").unpack
        pack_q, unpack_d = struct.Struct("<q").pack, struct.Struct("<d").unpack

        def float_bits_py(x: float) -> int:
            bits: int = unpack_q(pack_d(x))[0]
            return bits

        def bits_float_py(i: int) -> float:
            value: float = unpack_d(pack_q(i))[0]
            return value

        return float_bits_py, bits_float_py

    from llvmlite import ir
    from numba import extending, types

    intrinsic: Callable[[Callable[..., Any]], Any] = extending.intrinsic

    @intrinsic
    def float_bits_nb(typingctx: Any, x: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.IntType(64))

        return types.int64(types.float64), codegen

    @intrinsic
    def bits_float_nb(typingctx: Any, i: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.DoubleType())

        return types.float64(types.int64), codegen

    return float_bits_nb, bits_float_nb


#: ``float_bits(x)`` is the int64 whose bits are float64 ``x``; ``bits_float`` the inverse.
#: For use inside :func:`maybe_njit` kernels (without Numba they are plain functions).
float_bits, bits_float = _bits_helpers()
