"""The default MLP evaluated in NumPy, for hosts without torch.

Weights file format (``.npz``, written by ``scripts/train_default_model.py``):

* ``w0, b0, w1, b1, ..., w{k}, b{k}``: the layers of a ``torch.nn.Linear`` stack, weights in
  torch's ``(out_features, in_features)`` layout, ``float32``;
* ``feature_version`` (0-d str array) and ``feature_width`` (0-d int array): the input
  contract the weights were trained for (:mod:`nethical_grpc.inference.features`).

The network is ``Linear -> ReLU -> ... -> Linear -> sigmoid``: ReLU after every layer but
the last, whose single output is the logit of the probability of harm.  Computation is in
``float32`` (like the TorchScript model on CPU), so both paths agree to about ``1e-6``.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from nethical_grpc.inference.errors import ModelLoadError

__all__ = ["NumpyMLP"]

Float32Array = npt.NDArray[np.float32]
_MAX_LAYERS: Final = 16
#: the arrays of a layer: w<i> (weights) and b<i> (bias)
_LAYER_KEY: Final = re.compile(r"[wb][0-9]+")


class NumpyMLP:
    """A ReLU MLP with a sigmoid output, loaded from an ``.npz`` weights file.

    Attributes: ``input_width`` (columns of an input row), ``feature_version`` (``""`` when
    the file does not say), ``layer_sizes`` (``(in, hidden..., 1)``), ``nbytes`` (parameter
    bytes).
    """

    def __init__(self, weights: list[Float32Array], biases: list[Float32Array], version: str):
        self._weights_t = [np.ascontiguousarray(w.T) for w in weights]
        self._biases = biases
        self.feature_version = version
        self.input_width = int(weights[0].shape[1])
        self.layer_sizes = (self.input_width, *(int(w.shape[0]) for w in weights))
        self.nbytes = sum(int(w.nbytes) for w in weights) + sum(int(b.nbytes) for b in biases)

    def _logits(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]:
        """The last layer's output per row, in the dtype of ``x``."""
        h = x
        last = len(self._weights_t) - 1
        for i, (w, b) in enumerate(zip(self._weights_t, self._biases, strict=True)):
            h = h @ w.astype(x.dtype, copy=False)
            h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        return h[:, 0]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NumpyMLP:
        """Read and check a weights file.

        Raises :class:`ModelLoadError` when the file is missing, is not an ``.npz`` archive
        (a single ``.npy`` array under an ``.npz`` name included), lacks ``w0``/``b0``, has
        layers that are not numbers (strings, say), whose shapes do not chain, a last layer
        with more than one output, or non-finite values.
        """
        p = Path(path)
        try:
            loaded = np.load(p, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ModelLoadError(
                    f"{p} is not a readable .npz weights file: it holds a single "
                    f"{type(loaded).__name__} (.npy), not an archive of named arrays"
                )
            with loaded as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except FileNotFoundError as exc:
            raise ModelLoadError(f"model weights file {p} does not exist") from exc
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelLoadError(f"{p} is not a readable .npz weights file: {exc}") from exc
        if "w0" not in arrays:
            raise ModelLoadError(f"{p} is not an MLP weights file (no 'w0' array)")
        weights: list[Float32Array] = []
        biases: list[Float32Array] = []
        for i in range(_MAX_LAYERS):
            if f"w{i}" not in arrays:
                break
            if f"b{i}" not in arrays:
                raise ModelLoadError(f"{p}: layer {i} has weights 'w{i}' but no bias 'b{i}'")
            for name in (f"w{i}", f"b{i}"):
                if arrays[name].dtype.kind not in "fiu":
                    raise ModelLoadError(
                        f"{p}: '{name}' holds {arrays[name].dtype} values; expected numbers "
                        "(float32 weights)"
                    )
            w = arrays[f"w{i}"].astype(np.float32)
            b = arrays[f"b{i}"].astype(np.float32)
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ModelLoadError(
                    f"{p}: layer {i} has weight shape {w.shape} and bias shape {b.shape}; "
                    "expected (out, in) and (out,)"
                )
            if weights and w.shape[1] != weights[-1].shape[0]:
                raise ModelLoadError(
                    f"{p}: layer {i} takes {w.shape[1]} inputs but layer {i - 1} gives "
                    f"{weights[-1].shape[0]}"
                )
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ModelLoadError(f"{p}: layer {i} holds non-finite values")
            weights.append(w)
            biases.append(b)
        stray = sorted(
            (k for k in arrays if _LAYER_KEY.fullmatch(k) and int(k[1:]) >= len(weights)),
            key=lambda k: (int(k[1:]), k),
        )
        if stray:  # a gap in the numbering, or layers past the most this reads
            raise ModelLoadError(
                f"{p}: '{stray[0]}' follows no layer {int(stray[0][1:]) - 1}: layers are "
                f"w0/b0, w1/b1, ... numbered without gaps, at most {_MAX_LAYERS} of them"
            )
        if weights[-1].shape[0] != 1:
            raise ModelLoadError(
                f"{p}: the last layer has {weights[-1].shape[0]} outputs; expected 1 (a logit)"
            )
        version = str(arrays["feature_version"]) if "feature_version" in arrays else ""
        return cls(weights, biases, version)

    def predict(self, x: Float32Array) -> npt.NDArray[np.float64]:
        """Probabilities of harm for a validated ``(n, input_width)`` ``float32`` batch.

        Returns shape ``(n,)`` ``float64`` values in ``[0, 1]``.  The caller validates ``x``
        (see :meth:`nethical_grpc.inference.engine.InferenceEngine.predict_batch`).  The
        layers run in ``float32``; rows of huge finite values, on which that overflows
        (3e38 everywhere: inf - inf in a layer, a NaN logit), run again in ``float64``.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # such rows are done again
            z = self._logits(x).astype(np.float64)
        overflowed = ~np.isfinite(z)
        if overflowed.any():
            z[overflowed] = self._logits(x[overflowed].astype(np.float64))
        # Numerically stable logistic: 0.5 * (1 + tanh(z / 2)).
        out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
        return out
