"""Optional torch: import it once if allowed, and say why not otherwise.

torch is an optional dependency (the ``gpu`` extra).  It is considered unavailable when
the environment variable :data:`DISABLE_TORCH_ENV_VAR` is ``1``, ``true`` or ``yes``
(case-insensitive; read at each call, so tests can flip it) or when ``import torch``
fails.  Nothing here imports torch at module import time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["DISABLE_TORCH_ENV_VAR", "quiet_torchscript", "torch_or_reason", "torch_version"]

DISABLE_TORCH_ENV_VAR: Final = "NETHICAL_DISABLE_TORCH"
_TRUTHY: Final = frozenset({"1", "true", "yes"})
_import_error: str | None = None


def torch_or_reason() -> tuple[Any, str | None]:
    """``(torch_module, None)`` when torch is usable, else ``(None, reason)``.

    Reasons: ``"torch disabled by NETHICAL_DISABLE_TORCH=1"``, ``"torch not installed"`` or
    ``"torch import failed: <error>"`` (a broken install is reported, never fatal).
    """
    global _import_error
    raw = os.environ.get(DISABLE_TORCH_ENV_VAR, "").strip()
    if raw.lower() in _TRUTHY:
        return None, f"torch disabled by {DISABLE_TORCH_ENV_VAR}={raw}"
    if _import_error is not None:
        return None, _import_error
    try:
        import torch
    except ImportError:
        _import_error = "torch not installed"
        return None, _import_error
    except Exception as exc:  # e.g. a CUDA/driver mismatch at import: fall back, do not crash
        _import_error = f"torch import failed: {type(exc).__name__}: {exc}"
        return None, _import_error
    return torch, None


def torch_version(torch: Any) -> str:
    """torch's version without the local build tag (``"2.13.0+cpu"`` -> ``"2.13.0"``)."""
    return str(torch.__version__).split("+", 1)[0]


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's deprecation warnings for ``torch.jit`` (script/save/load).

    TorchScript is deprecated in recent torch in favour of ``torch.export`` but still the
    model file format of this contract; the warning would otherwise repeat on every load.
    Not thread-safe (``warnings.catch_warnings``): use it at load/save time only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=Warning)
        yield
