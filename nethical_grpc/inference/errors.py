"""Exceptions raised by the inference engine.

* :class:`ModelLoadError`: the engine cannot be built from the given model (file missing or
  unreadable, not TorchScript / not an MLP weights file, the probe call fails or answers in
  the wrong shape, or a TorchScript model without torch installed).  The region node
  refuses to start with its message.
* :class:`UnsupportedPrecisionError`: the requested precision cannot run on the chosen
  device or backend.  A ``ValueError``, since it is a configuration error.
* :class:`InferenceError`: the model failed while scoring an accepted batch (for instance an
  embedding index out of range, non-finite outputs, or outputs outside [0, 1]).  Bad
  input is reported as ``ValueError`` before the model runs, never as this.
"""

from __future__ import annotations

__all__ = ["InferenceError", "ModelLoadError", "UnsupportedPrecisionError"]


class ModelLoadError(RuntimeError):
    """The model could not be loaded or does not honour the input/output contract."""


class UnsupportedPrecisionError(ValueError):
    """The requested precision is not supported on this device or backend."""


class InferenceError(RuntimeError):
    """The model raised or returned an unusable result for a valid batch."""
