"""Model inference for governance scoring: features, engine, NumPy fallback, micro-batching.

* :mod:`~nethical_grpc.inference.features`: the input contract,
  :func:`action_features` -> ``(n, FEATURE_WIDTH)`` ``float32``.
* :mod:`~nethical_grpc.inference.engine`: :class:`InferenceEngine` (PyTorch on CUDA/CPU,
  autocast fp16/bf16, NumPy fallback without torch).
* :mod:`~nethical_grpc.inference.devices`: :func:`is_gpu_available`, :func:`get_device_info`.
* :mod:`~nethical_grpc.inference.microbatch`: :class:`MicroBatcher` (asyncio).
* :mod:`~nethical_grpc.inference.errors`: :class:`ModelLoadError`,
  :class:`UnsupportedPrecisionError`, :class:`InferenceError`.

Importing this package never imports torch; the engine does, when it is built.
"""

from __future__ import annotations

from nethical_grpc.inference.devices import get_device_info, get_gpu_info, is_gpu_available
from nethical_grpc.inference.engine import (
    DEFAULT_TORCHSCRIPT,
    DEFAULT_WEIGHTS,
    PRECISIONS,
    InferenceEngine,
)
from nethical_grpc.inference.errors import (
    InferenceError,
    ModelLoadError,
    UnsupportedPrecisionError,
)
from nethical_grpc.inference.features import FEATURE_VERSION, FEATURE_WIDTH, action_features
from nethical_grpc.inference.microbatch import BatchStats, MicroBatcher
from nethical_grpc.inference.torch_support import DISABLE_TORCH_ENV_VAR

__all__ = [
    "DEFAULT_TORCHSCRIPT",
    "DEFAULT_WEIGHTS",
    "DISABLE_TORCH_ENV_VAR",
    "FEATURE_VERSION",
    "FEATURE_WIDTH",
    "PRECISIONS",
    "BatchStats",
    "InferenceEngine",
    "InferenceError",
    "MicroBatcher",
    "ModelLoadError",
    "UnsupportedPrecisionError",
    "action_features",
    "get_device_info",
    "get_gpu_info",
    "is_gpu_available",
]
