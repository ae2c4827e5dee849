"""Which compute device is there: :func:`is_gpu_available` and :func:`get_device_info`."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

from nethical_grpc.inference.torch_support import torch_or_reason, torch_version

__all__ = ["cpu_name", "get_device_info", "get_gpu_info", "is_gpu_available", "no_gpu_reason"]

_GIB = float(2**30)


def is_gpu_available() -> bool:
    """True when torch is usable (see :mod:`~nethical_grpc.inference.torch_support`) and
    ``torch.cuda.is_available()``."""
    torch, _ = torch_or_reason()
    return torch is not None and bool(torch.cuda.is_available())


def no_gpu_reason() -> str | None:
    """Why no CUDA device can be used, or ``None`` when one can."""
    torch, reason = torch_or_reason()
    if torch is None:
        return reason
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    return "no CUDA device is visible (driver missing or CUDA_VISIBLE_DEVICES empty)"


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _total_memory_gib() -> float | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / _GIB, 2)
    return None


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"device index must be an int, got {index!r}")
    if index < 0:
        raise ValueError(f"device index must be >= 0, got {index}")
    return index


def get_device_info(index: int = 0) -> dict[str, Any]:
    """Describe compute device ``index``: CUDA device ``index`` when a GPU is usable, else
    the CPU (which is the only device, index 0).

    Keys on CUDA: ``available`` (True), ``backend`` ("cuda"), ``index``, ``device``
    ("cuda:N"), ``device_name``, ``total_memory_gb`` (GiB), ``compute_capability``
    ("9.0"), ``multi_processor_count``, ``bf16_supported``, ``device_count``,
    ``torch_version``, ``cuda_version``.

    Keys on CPU: ``available`` (False: no GPU), ``backend`` ("cpu"), ``index`` (0),
    ``device`` ("cpu"), ``device_name`` (CPU model), ``cores``, ``total_memory_gb`` (host
    memory, GiB, or None), ``reason`` (why no GPU), ``torch_version`` and ``torch_threads``
    (None without torch).

    Raises ``ValueError`` for a non-int or negative index, or an index past the last
    device (with the number of devices in the message).
    """
    i = _check_index(index)
    torch, _ = torch_or_reason()
    if torch is not None and torch.cuda.is_available():
        count = int(torch.cuda.device_count())
        if i >= count:
            raise ValueError(
                f"CUDA device index {i} is out of range: {count} device(s) visible "
                f"(valid indices 0..{count - 1})"
            )
        props = torch.cuda.get_device_properties(i)
        return {
            "available": True,
            "backend": "cuda",
            "index": i,
            "device": f"cuda:{i}",
            "device_name": str(props.name),
            "total_memory_gb": round(float(props.total_memory) / _GIB, 2),
            "compute_capability": f"{props.major}.{props.minor}",
            "multi_processor_count": int(props.multi_processor_count),
            "bf16_supported": bool(torch.cuda.is_bf16_supported()),
            "device_count": count,
            "torch_version": torch_version(torch),
            "cuda_version": torch.version.cuda,
        }
    if i != 0:
        raise ValueError(
            f"device index {i} is out of range: no GPU, the CPU is the only device (0)"
        )
    return {
        "available": False,
        "backend": "cpu",
        "index": 0,
        "device": "cpu",
        "device_name": cpu_name(),
        "cores": os.cpu_count(),
        "total_memory_gb": _total_memory_gib(),
        "reason": no_gpu_reason(),
        "torch_version": None if torch is None else torch_version(torch),
        "torch_threads": None if torch is None else int(torch.get_num_threads()),
    }


#: The guide's name for :func:`get_device_info`.
get_gpu_info = get_device_info
