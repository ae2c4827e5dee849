"""Batched model inference: PyTorch on CUDA or CPU, with a NumPy fallback.

:class:`InferenceEngine` scores feature rows (:mod:`nethical_grpc.inference.features`) with
a model whose contract is:

* input: an ``(n, FEATURE_WIDTH)`` batch, ``float32`` (or ``int64`` token ids for a model
  that only accepts integers, e.g. one starting with an embedding);
* output: probabilities of harm in ``[0, 1]``, shape ``(n,)`` or ``(n, 1)`` (or ``()``
  for one row: a model ending in ``.squeeze()``); a tuple or list output is allowed, its
  first element is used.

Backends, chosen at construction:

* ``torch``: a TorchScript file (the shipped default ``default_model/model.pt`` or
  ``model_path``), on ``cuda:N`` when a GPU is usable and ``device="auto"``, else on the CPU;
  every call runs under :func:`torch.inference_mode`, and under :func:`torch.autocast` for
  ``precision="fp16"``/``"bf16"`` (the weights stay fp32, autocast runs the matrix products
  in the reduced type; inputs are given as fp32 and outputs read back as fp32).  A model
  saved with all its floating-point weights in fp16, bf16 or fp64 gets fp32 weights at load.
* ``numpy``: when torch is not installed, disabled (``NETHICAL_DISABLE_TORCH=1``),
  ``backend="numpy"``, or, with ``backend="auto"``, for an ``.npz`` ``model_path``: the
  default MLP (``default_model/weights.npz``, or an ``.npz`` ``model_path``) in NumPy, fp32
  only, CPU only.  Same outputs as the TorchScript default model within ``1e-5``.

On CUDA the input's finiteness is checked on the device, in the same call (the host pass
over a large batch cost as much as its copy to the device); an array in page-locked
("pinned") memory, such as one from :meth:`InferenceEngine.input_buffer`, is copied
asynchronously by DMA instead of through the driver's staging buffers.  A CUDA error
leaves the device unusable for the rest of the process (a device-side assert, e.g. an
embedding id out of range): the failing call raises :class:`InferenceError` and the engine
moves to the CPU, reloading the model there, so the node keeps scoring.

An integer-input model's ids are checked on the host against its vocabulary: ``vocab_size``
in the model's metadata, else the size of its embedding table when it has exactly one.

Construction loads the model and makes a probe call with a ``(2, FEATURE_WIDTH)`` zero
batch (float32, then int64 if float32 fails); any failure is a :class:`ModelLoadError`
whose message says what is wrong (the region node refuses to start with it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt

from nethical_grpc.inference.devices import get_device_info
from nethical_grpc.inference.errors import (
    InferenceError,
    ModelLoadError,
    UnsupportedPrecisionError,
)
from nethical_grpc.inference.features import FEATURE_VERSION, FEATURE_WIDTH
from nethical_grpc.inference.numpy_model import NumpyMLP
from nethical_grpc.inference.torch_support import quiet_torchscript, torch_or_reason, torch_version

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEFAULT_TORCHSCRIPT",
    "DEFAULT_WEIGHTS",
    "MODEL_META_FILE",
    "PRECISIONS",
    "InferenceEngine",
]

Float64Array = npt.NDArray[np.float64]
Precision = Literal["fp32", "fp16", "bf16"]

#: Directory of the shipped default model.
DEFAULT_MODEL_DIR: Final = Path(__file__).resolve().parent / "default_model"
#: The default model as TorchScript (torch backend).
DEFAULT_TORCHSCRIPT: Final = DEFAULT_MODEL_DIR / "model.pt"
#: The default model's weights (NumPy backend).
DEFAULT_WEIGHTS: Final = DEFAULT_MODEL_DIR / "weights.npz"
#: Optional JSON inside a TorchScript file (``_extra_files``): ``feature_version`` and
#: ``feature_width`` the model was trained for; checked when present.
MODEL_META_FILE: Final = "nethical_meta.json"
#: Accepted precisions.
PRECISIONS: Final = ("fp32", "fp16", "bf16")
_BACKENDS: Final = ("auto", "torch", "numpy")
_PROBE_ROWS: Final = 2
#: How far outside [0, 1] an answer may lie (rounding of a reduced-precision sigmoid) and
#: still be taken, clipped; farther is an InferenceError.
_RANGE_TOLERANCE: Final = 1e-6
_GIB: Final = float(2**30)
_EMBEDDING_MODULES: Final = ("Embedding", "EmbeddingBag")
#: How a torch.save() file in the legacy (pre-zip) format starts: a pickled magic number.
_LEGACY_TORCH_SAVE: Final = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
#: How the message of an error raised inside a TorchScript model starts (its last line is
#: the error).
_TORCHSCRIPT_FAILED: Final = "The following operation failed in the TorchScript interpreter"

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``; for an error raised inside a TorchScript model,
    whose first line only says that one was, the error itself (the message's last line)."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(text) > 1 and text[0].startswith(_TORCHSCRIPT_FAILED):
        return text[-1].strip()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _with_fp32_weights(torch: Any, model: Any) -> Any:
    """``model`` with float32 weights when all its floating-point parameters were saved in
    one other type (a model exported after ``.half()``, ``.bfloat16()`` or ``.double()``),
    which would refuse the contract's float32 input; a model that mixes types on purpose
    is left as it is."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and torch.float32 not in dtypes:
        model.float()
    return model


def _not_torchscript(path: Path) -> str | None:
    """What a file that ``torch.jit.load`` refused is, when it is a known other kind of
    model file: NumPy ``.npz`` weights, or a ``torch.save()`` checkpoint (torch's own
    message calls the latter corrupted)."""
    checkpoint = (
        "a torch.save() checkpoint (a pickled state_dict or module), which holds no model "
        "code: export the model as TorchScript, torch.jit.save(torch.jit.script(model), path)"
    )
    with contextlib.suppress(OSError):
        with path.open("rb") as f:
            if f.read(len(_LEGACY_TORCH_SAVE)) == _LEGACY_TORCH_SAVE:
                return checkpoint
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    if names and all(n.endswith(".npy") and "/" not in n for n in names):
        return (
            "a NumPy .npz weights file, which runs on backend 'numpy' (a file named *.npz "
            "also loads with backend 'auto')"
        )
    if any(n.endswith("data.pkl") for n in names) and not any(
        n.endswith("constants.pkl") for n in names
    ):
        return checkpoint
    return None


def _process_rss_bytes() -> tuple[int, str]:
    """Current resident set size from ``/proc/self/statm``, else the peak from getrusage."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE"), "current"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "peak"


class InferenceEngine:
    """Scores batches of feature rows with the default or a given model.

    Parameters
    ----------
    model_path:
        ``None`` for the shipped default model, else a TorchScript file (torch backend) or
        an ``.npz`` MLP weights file (NumPy backend) honouring the contract in the module
        docstring.
    device:
        ``"auto"`` (``cuda:0`` when a GPU is usable, else ``"cpu"``), ``"cpu"``, ``"cuda"``
        or ``"cuda:N"``.  ``ValueError`` for anything else, for CUDA when no GPU is usable
        (with the reason) and for an index past the last GPU.
    precision:
        ``"fp32"``, ``"fp16"`` or ``"bf16"``.  ``ValueError`` for another string;
        :class:`UnsupportedPrecisionError` when the device or backend cannot run it (bf16 on
        a GPU without bf16, any reduced precision on the NumPy backend, or an autocast
        probe that fails).
    backend:
        ``"auto"`` (torch when usable, else NumPy; NumPy for an ``.npz`` ``model_path``),
        ``"torch"`` (:class:`ModelLoadError` when torch is unavailable) or ``"numpy"``.
    numpy_reason:
        why the NumPy backend is used when ``backend="numpy"``, for :meth:`describe` (a
        caller that chose it itself says why; default ``"numpy backend requested"``).
    num_threads:
        ``None`` leaves torch's intra-op thread count alone; an int ``>= 1`` calls
        ``torch.set_num_threads`` (process-wide) before loading.  Worth setting on a CPU
        host whose cores are shared or limited by a container quota (torch sizes its pool
        from the host's cores); see ``bench/gpu.py``.  Ignored by the NumPy backend.
        ``ValueError`` for anything else.

    Raises :class:`ModelLoadError` when the model cannot be loaded or fails the probe.

    Attributes: ``backend`` ("torch" or "numpy"), ``device`` ("cpu" or "cuda:N"),
    ``precision``, ``model_path`` (resolved path), ``input_width``, ``input_kind``
    ("float" or "int"), ``id_limit`` (an integer-input model's vocabulary size, when known),
    ``fallback_reason`` (why the NumPy backend is used, else None), ``device_lost`` (why
    the engine left its CUDA device for the CPU, else None).
    Instances are safe to call from several threads.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "fp32",
        *,
        backend: str = "auto",
        num_threads: int | None = None,
        numpy_reason: str = "numpy backend requested",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}; got {backend!r}")
        if not isinstance(device, str):
            raise ValueError(f"device must be a string, got {device!r}")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
        self.precision = cast(Precision, precision)
        self.input_width = FEATURE_WIDTH
        self.input_kind: Literal["float", "int"] = "float"
        self.id_limit: int | None = None
        self.device_lost: str | None = None
        self._move_lock = threading.Lock()
        self._torch: Any = None
        self._model: Any = None
        self._model_f64: Any = None  # a float64 CPU copy, for rows that overflow (made once)
        self._mlp: NumpyMLP | None = None
        self._autocast_dtype: Any = None
        torch, reason = (None, numpy_reason) if backend == "numpy" else torch_or_reason()
        if backend == "auto" and model_path is not None and Path(model_path).suffix == ".npz":
            torch, reason = None, "an .npz weights file runs on the NumPy backend"
        if backend == "torch" and torch is None:
            raise ModelLoadError(f"backend 'torch' was requested but {reason}")
        if torch is not None:
            self.backend: Literal["torch", "numpy"] = "torch"
            self.fallback_reason: str | None = None
            self._torch = torch
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            self.device = self._resolve_torch_device(device)
            self.model_path = Path(model_path) if model_path is not None else DEFAULT_TORCHSCRIPT
            self._load_torchscript()
            self._setup_precision()
        else:
            self.backend = "numpy"
            self.fallback_reason = reason
            self.device = self._resolve_numpy_device(device)
            self.model_path = Path(model_path) if model_path is not None else DEFAULT_WEIGHTS
            self._load_numpy()

    # ------------------------------------------------------------------ construction

    def _resolve_torch_device(self, device: str) -> str:
        torch = self._torch
        if device == "auto":
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return "cpu"
        if device == "cuda" or device.startswith("cuda:"):
            index_text = device.partition(":")[2] if ":" in device else "0"  # "cuda:": none
            if not (index_text.isascii() and index_text.isdigit()):
                raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
            info = get_device_info(int(index_text))  # ValueError for a bad index
            if info["backend"] != "cuda":
                raise ValueError(
                    f"device {device!r} requested but no GPU is usable: {info['reason']}"
                )
            return str(info["device"])
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")

    def _resolve_numpy_device(self, device: str) -> str:
        if device in ("auto", "cpu"):
            if self.precision != "fp32":
                raise UnsupportedPrecisionError(
                    f"precision {self.precision} is not supported by the NumPy fallback "
                    f"({self.fallback_reason}); it runs fp32 only"
                )
            return "cpu"
        raise ValueError(
            f"device {device!r} needs torch ({self.fallback_reason}); the NumPy fallback "
            "runs on the CPU only"
        )

    def _load_numpy(self) -> None:
        path = self.model_path
        if path.suffix != ".npz":
            raise ModelLoadError(
                f"cannot load {path}: TorchScript models need torch ({self.fallback_reason}); "
                "without torch only .npz MLP weights files can be loaded"
            )
        mlp = NumpyMLP.load(path)
        if mlp.input_width != FEATURE_WIDTH:
            raise ModelLoadError(
                f"{path} takes {mlp.input_width} input columns; the feature contract has "
                f"{FEATURE_WIDTH}"
            )
        self._check_version(mlp.feature_version)
        self._mlp = mlp
        self._probe(np.zeros((_PROBE_ROWS, FEATURE_WIDTH), dtype=np.float32))

    def _check_version(self, version: str) -> None:
        if version and version != FEATURE_VERSION:
            raise ModelLoadError(
                f"{self.model_path} was trained for features {version!r}, this code computes "
                f"{FEATURE_VERSION!r}: retrain it (scripts/train_default_model.py)"
            )

    def _load_torchscript(self) -> None:
        torch = self._torch
        path = self.model_path
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist or is not a file")
        extra = {MODEL_META_FILE: ""}
        try:
            with quiet_torchscript():
                model = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except Exception as exc:
            what = _not_torchscript(path) or _first_line(exc)
            raise ModelLoadError(f"cannot load {path} as a TorchScript model: {what}") from exc
        model.eval()
        self._model = _with_fp32_weights(torch, model)
        if extra[MODEL_META_FILE]:
            self._check_meta(extra[MODEL_META_FILE])
        zeros = np.zeros((_PROBE_ROWS, FEATURE_WIDTH), dtype=np.float32)
        try:
            self._probe(zeros)
        except ModelLoadError as float_error:
            cause = float_error.__cause__
            if not (isinstance(cause, InferenceError) and cause.__cause__ is not None):
                raise  # the model ran but answered wrongly: no point retrying with int64
            self.input_kind = "int"
            self.id_limit = self._vocab_size(extra[MODEL_META_FILE])
            try:
                self._probe(zeros.astype(np.int64))
            except ModelLoadError as int_error:
                raise ModelLoadError(
                    f"{path} does not honour the input contract: the probe call with a "
                    f"({_PROBE_ROWS}, {FEATURE_WIDTH}) zero batch failed as float32 "
                    f"({cause}) and as int64 ({int_error.__cause__})"
                ) from int_error

    def _vocab_size(self, raw_meta: str | bytes) -> int | None:
        """How many ids an integer-input model takes: ``vocab_size`` in its metadata, else
        the rows of its only embedding table (``None`` with none or several)."""
        if raw_meta:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                size = json.loads(raw_meta).get("vocab_size")
                if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
                    return size
        tables = [
            m
            for _, m in self._model.named_modules()
            if getattr(m, "original_name", type(m).__name__) in _EMBEDDING_MODULES
        ]
        if len(tables) != 1:
            return None
        weight = getattr(tables[0], "weight", None)
        return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None

    def _check_meta(self, raw: str | bytes) -> None:
        try:
            meta = json.loads(raw)
            version = str(meta.get("feature_version", ""))
            width = int(meta.get("feature_width", FEATURE_WIDTH))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelLoadError(
                f"{self.model_path}: unreadable {MODEL_META_FILE}: {_first_line(exc)}"
            ) from exc
        if width != FEATURE_WIDTH:
            raise ModelLoadError(
                f"{self.model_path} was trained for {width} input columns; the feature "
                f"contract has {FEATURE_WIDTH}"
            )
        self._check_version(version)

    def _probe(self, x: npt.NDArray[Any]) -> None:
        """One call on ``x``; :class:`ModelLoadError` unless it answers ``(2,)`` probabilities.

        The error's ``__cause__`` is the :class:`InferenceError` from :meth:`_run` when the
        call failed or answered values that are not probabilities in ``[0, 1]`` (whose own
        ``__cause__`` is the model's exception, if it raised).  Every later call is held to
        the same contract (a model that answers zeros here and logits later fails there).
        """
        try:
            self._run(x)
        except InferenceError as exc:
            raise ModelLoadError(
                f"{self.model_path}: the probe call with a {x.shape} {x.dtype} zero batch "
                f"failed: {exc}"
            ) from exc

    def _setup_precision(self) -> None:
        torch = self._torch
        if self.precision == "fp32":
            return
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        device_type = self.device.split(":", 1)[0]
        if not torch.amp.is_autocast_available(device_type):
            raise UnsupportedPrecisionError(
                f"precision {self.precision}: torch {torch_version(torch)} has no autocast "
                f"for {device_type}"
            )
        if device_type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UnsupportedPrecisionError(f"precision bf16 is not supported on {self.device}")
        self._autocast_dtype = dtype
        kind = np.float32 if self.input_kind == "float" else np.int64
        try:
            self._probe(np.zeros((_PROBE_ROWS, FEATURE_WIDTH), dtype=kind))
        except ModelLoadError as exc:
            raise UnsupportedPrecisionError(
                f"precision {self.precision} does not run on {self.device} with torch "
                f"{torch_version(torch)}: {exc.args[0]}"
            ) from exc

    # ------------------------------------------------------------------ inference

    def validate_input(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        """Check a batch and convert it to the dtype the model takes.

        Returns a C-contiguous, writable ``float32`` array (``int64`` for an integer-input
        model) of shape ``(n, input_width)``.  Raises ``ValueError`` with a clear message
        for: something that is not a rectangular numeric array, ``ndim != 2``, a width other
        than ``input_width``, a bool/complex/object/string dtype, a non-finite value (or
        one too large for float32), floats given to an integer-input model, integers
        outside int64, or ids outside ``[0, id_limit)`` when the model's vocabulary is
        known.
        """
        out, given = self._coerce(x)
        self._check_values(out, given)
        return out

    def _coerce(self, x: npt.ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """The shape and dtype half of :meth:`validate_input`: ``(converted, as given)``."""
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"input is not a rectangular numeric array: {exc}") from exc
        if arr.ndim != 2:
            raise ValueError(
                f"expected a 2-D batch of shape (n, {self.input_width}), got shape "
                f"{arr.shape}; use predict() for a single row"
            )
        if arr.shape[1] != self.input_width:
            raise ValueError(
                f"expected {self.input_width} columns per row, got {arr.shape[1]} "
                f"(shape {arr.shape})"
            )
        kind = arr.dtype.kind
        if kind not in "fiu":
            raise ValueError(
                f"dtype {arr.dtype} is not supported; pass float features (or integer ids "
                "for an integer-input model)"
            )
        if self.input_kind == "int":
            if kind == "f":
                raise ValueError(
                    f"this model takes integer inputs (int64 ids), got dtype {arr.dtype}"
                )
            if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
                raise ValueError("integer inputs must fit in int64")
            out = np.ascontiguousarray(arr, dtype=np.int64)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out = np.ascontiguousarray(arr, dtype=np.float32)
        if not out.flags.writeable:
            out = out.copy()
        return out, arr

    def _check_values(self, out: npt.NDArray[Any], given: npt.NDArray[Any]) -> None:
        """The value half of :meth:`validate_input`, on the host."""
        if self.input_kind == "float":
            if not np.isfinite(out).all():
                self._refuse_non_finite(out, given)
            return
        limit = self.id_limit
        if limit is not None and out.size and (int(out.min()) < 0 or int(out.max()) >= limit):
            row, col = (int(v) for v in np.argwhere((out < 0) | (out >= limit))[0])
            raise ValueError(
                f"id {int(out[row, col])} at row {row}, column {col} is outside this model's "
                f"vocabulary [0, {limit})"
            )

    @staticmethod
    def _refuse_non_finite(out: npt.NDArray[Any], given: npt.NDArray[Any]) -> None:
        row, col = (int(v) for v in np.argwhere(~np.isfinite(out))[0])
        raise ValueError(
            f"non-finite input at row {row}, column {col} ({given[row, col].item()!r}; NaN, "
            "inf and values beyond float32 range are rejected)"
        )

    def input_buffer(self, rows: int) -> npt.NDArray[Any]:
        """An uninitialised ``(rows, input_width)`` array of the dtype the model takes, to
        fill and pass to :meth:`predict_batch`.

        On CUDA it lies in page-locked host memory, which the call copies to the device by
        DMA (measured several times faster than from ordinary memory for large batches,
        ``bench/gpu.py``); elsewhere it is an ordinary array.  The buffer may be refilled
        once the call that used it has returned.
        """
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"rows must be an int >= 0, got {rows!r}")
        dtype = np.float32 if self.input_kind == "float" else np.int64
        shape = (rows, self.input_width)
        if not self._on_cuda():
            return np.empty(shape, dtype=dtype)
        torch = self._torch
        tdtype = torch.float32 if self.input_kind == "float" else torch.int64
        buf: npt.NDArray[Any] = torch.empty(shape, dtype=tdtype, pin_memory=True).numpy()
        return buf

    def predict_batch(self, x: npt.ArrayLike) -> Float64Array:
        """Probabilities of harm for each row of ``x``: shape ``(n,)``, ``float64``.

        ``x`` is validated as by :meth:`validate_input` (``ValueError`` on bad input; on
        CUDA the finiteness check runs on the device).  An empty batch returns an empty
        array without calling the model.  Raises :class:`InferenceError` if the model
        itself fails or returns a wrong shape, non-finite values or values outside
        ``[0, 1]``.
        """
        out, given = self._coerce(x)
        on_device = self._on_cuda() and self.input_kind == "float"
        if not on_device:
            self._check_values(out, given)
        if out.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return self._run(out, given if on_device else None)

    def predict(self, row: npt.ArrayLike) -> float:
        """Probability of harm for one row of ``input_width`` values (``ValueError`` if the
        row is not 1-D; otherwise as :meth:`predict_batch`)."""
        arr = np.asarray(row)
        if arr.ndim != 1:
            raise ValueError(
                f"expected one row of shape ({self.input_width},), got shape {arr.shape}; "
                "use predict_batch() for a batch"
            )
        return float(self.predict_batch(arr[None, :])[0])

    def _on_cuda(self) -> bool:
        return self.backend == "torch" and self.device.startswith("cuda")

    def _run(
        self, arr: npt.NDArray[Any], check_finite: npt.NDArray[Any] | None = None
    ) -> Float64Array:
        """One model call on validated rows.  ``check_finite`` (the rows as given) asks for
        the finiteness check on the device, fused into the read-back of the results."""
        n = int(arr.shape[0])
        if self._mlp is not None:
            return _probability_answers(self._mlp.predict(arr), n)
        torch = self._torch
        device = self.device
        autocast: Any = contextlib.nullcontext()
        if self._autocast_dtype is not None:
            autocast = torch.autocast(device.split(":", 1)[0], dtype=self._autocast_dtype)
        try:
            with torch.inference_mode(), autocast:
                x = torch.from_numpy(arr)
                if device != "cpu":
                    x = x.to(device, non_blocking=bool(x.is_pinned()))
                out = self._model(x)
                if isinstance(out, tuple | list):
                    if not out:
                        raise InferenceError("the model returned an empty tuple")
                    out = out[0]
                if not isinstance(out, torch.Tensor):
                    raise InferenceError(f"the model returned {type(out).__name__}, not a tensor")
                shape = tuple(out.shape)
                # a model ending in .squeeze() answers one row with a 0-d tensor
                if shape not in ((n,), (n, 1)) and not (n == 1 and shape == ()):
                    raise InferenceError(
                        f"the model returned shape {shape} for {n} rows; expected ({n},) or "
                        f"({n}, 1)"
                    )
                result = out.reshape(n).float()
                if check_finite is not None:
                    finite = torch.isfinite(x).all().reshape(1).float()
                    # a model may answer on another device than its input's (e.g. the CPU)
                    result = torch.cat((result, finite.to(result.device)))
                probs: Float64Array = np.asarray(result.cpu(), dtype=np.float64)
        except InferenceError:
            raise
        except Exception as exc:
            if device != "cpu" and self._is_device_failure(exc):
                self._move_to_cpu(exc)
                raise InferenceError(
                    f"the model failed on a batch of {n} on {device}: {_first_line(exc)}; a "
                    "CUDA error leaves the device unusable for this process, so the engine "
                    "now runs on the CPU"
                ) from exc
            raise InferenceError(f"the model failed on a batch of {n}: {_first_line(exc)}") from exc
        if check_finite is not None:
            if probs[n] != 1.0:
                self._refuse_non_finite(arr, check_finite)
            probs = probs[:n]
        overflowed = ~np.isfinite(probs)
        if overflowed.any() and self.input_kind == "float":
            probs[overflowed] = self._in_float64(arr[overflowed])
        return _probability_answers(probs, n)

    def _in_float64(self, rows: npt.NDArray[Any]) -> Float64Array:
        """Rows of huge finite values on which the float32 (or fp16 / bf16) run overflowed
        to a non-finite answer, run again in float64 on the CPU, as the NumPy path does
        (the model loaded once more, as float64)."""
        torch = self._torch
        try:
            with self._move_lock:
                if self._model_f64 is None:
                    self._model_f64 = self._load_on_cpu().double().eval()
                model = self._model_f64
            with torch.inference_mode():
                out = model(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64)))
                if isinstance(out, tuple | list):
                    out = out[0]
                return np.asarray(out.reshape(len(rows)).cpu(), dtype=np.float64)
        except Exception as exc:
            raise InferenceError(
                f"the model's answer overflowed for {len(rows)} row(s), and it could not run "
                f"them again in float64: {_first_line(exc)}"
            ) from exc

    def _is_device_failure(self, exc: BaseException) -> bool:
        accelerator_error = getattr(self._torch, "AcceleratorError", None)
        if isinstance(accelerator_error, type) and isinstance(exc, accelerator_error):
            return True
        return "CUDA error" in str(exc)

    def _load_on_cpu(self) -> Any:
        """The model file loaded again, on the CPU."""
        with quiet_torchscript():
            model = self._torch.jit.load(str(self.model_path), map_location="cpu")
        return _with_fp32_weights(self._torch, model)

    def _move_to_cpu(self, exc: BaseException) -> None:
        """Reload the model on the CPU after a CUDA error (once, whichever thread met it)."""
        with self._move_lock:
            if self.device == "cpu":
                return
            lost = self.device
            try:
                model = self._load_on_cpu()
            except Exception as reload_error:  # the file changed or went away since start
                log.error(
                    "inference engine: CUDA error on %s (%s), and reloading %s on the CPU "
                    "failed (%s); calls will keep failing",
                    lost,
                    _first_line(exc),
                    self.model_path,
                    _first_line(reload_error),
                )
                return
            model.eval()
            self._model = model
            self._autocast_dtype = None
            self.precision = "fp32"
            self.device_lost = f"{lost}: {_first_line(exc)}"
            self.device = "cpu"
        log.error(
            "inference engine: CUDA error on %s (%s); the device is unusable for this process, "
            "the model now runs on the CPU in fp32",
            lost,
            _first_line(exc),
        )

    # ------------------------------------------------------------------ reporting

    def benchmark_throughput(
        self,
        batch_size: int = 32,
        iterations: int = 100,
        warmup: int = 10,
        *,
        pinned: bool = False,
    ) -> dict[str, Any]:
        """Time ``iterations`` :meth:`predict_batch` calls on one random batch.

        Each call is timed separately (``time.perf_counter``; on CUDA the device is
        synchronised before starting the clock and after each call, and every call copies
        its results back to the host anyway), after ``warmup`` untimed calls.  The input is
        uniform in ``[0, 1)`` (zeros and ones for an integer-input model), seeded, so runs
        are comparable.  ``pinned=True`` holds it in an :meth:`input_buffer` (page-locked
        memory on CUDA) instead of an ordinary array; the result says which (``pinned``).

        Returns ``batch_size``, ``iterations``, ``warmup``, ``backend``, ``device``,
        ``precision``, ``pinned``, ``throughput_samples_per_sec`` (``batch_size *
        iterations /`` total timed seconds), ``latency_ms`` (mean per call),
        ``latency_p50_ms``, ``latency_p90_ms``, ``latency_p99_ms``, ``latency_min_ms``,
        ``latency_max_ms``.
        Raises ``ValueError`` unless ``batch_size >= 1``, ``iterations >= 1`` and
        ``warmup >= 0`` are ints.
        """
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("iterations", iterations, 1),
            ("warmup", warmup, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        rng = np.random.default_rng(0)
        shape = (batch_size, self.input_width)
        x: npt.NDArray[Any] = (
            rng.integers(0, 2, size=shape, dtype=np.int64)
            if self.input_kind == "int"
            else rng.random(shape, dtype=np.float32)
        )
        if pinned:
            buffer = self.input_buffer(batch_size)
            buffer[...] = x
            x = buffer
        sync = self._sync
        for _ in range(warmup):
            self.predict_batch(x)
        sync()
        times = np.empty(iterations, dtype=np.float64)
        for i in range(iterations):
            t0 = time.perf_counter()
            self.predict_batch(x)
            sync()
            times[i] = time.perf_counter() - t0
        ms = times * 1e3
        total = float(times.sum())
        return {
            "batch_size": batch_size,
            "iterations": iterations,
            "warmup": warmup,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "pinned": bool(pinned and self._on_cuda()),
            "throughput_samples_per_sec": batch_size * iterations / total
            if total > 0
            else math.inf,
            "latency_ms": float(ms.mean()),
            "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p90_ms": float(np.percentile(ms, 90)),
            "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_min_ms": float(ms.min()),
            "latency_max_ms": float(ms.max()),
        }

    def _sync(self) -> None:
        """Wait for queued CUDA work (no-op on the CPU and the NumPy backend)."""
        if self._on_cuda():
            self._torch.cuda.synchronize(self.device)

    def memory_usage(self) -> dict[str, Any]:
        """Memory in use.

        On CUDA: ``device``, ``allocated_gb``, ``reserved_gb``, ``max_allocated_gb`` (torch's
        caching allocator, GiB) and ``total_gb`` (the device's memory).  On the CPU:
        ``device`` ("cpu"), ``rss_bytes`` and ``rss_gb`` of this process, ``rss_kind``
        ("current", or "peak" where the current value cannot be read) and
        ``allocated_gb``, the memory the engine itself holds (its model's, GiB), so
        ``memory["allocated_gb"]`` answers on any device.  Both include ``model_bytes``
        (parameter and buffer bytes of the model).
        """
        if self.backend == "torch" and self.device.startswith("cuda"):
            cuda = self._torch.cuda
            return {
                "device": self.device,
                "allocated_gb": cuda.memory_allocated(self.device) / _GIB,
                "reserved_gb": cuda.memory_reserved(self.device) / _GIB,
                "max_allocated_gb": cuda.max_memory_allocated(self.device) / _GIB,
                "total_gb": cuda.get_device_properties(self.device).total_memory / _GIB,
                "model_bytes": self.model_bytes(),
            }
        rss, kind = _process_rss_bytes()
        held = self.model_bytes()
        return {
            "device": "cpu",
            "allocated_gb": held / _GIB,
            "rss_bytes": rss,
            "rss_gb": rss / _GIB,
            "rss_kind": kind,
            "model_bytes": held,
        }

    #: The guide's name for :meth:`memory_usage`.
    get_memory_usage = memory_usage

    def model_bytes(self) -> int:
        """Bytes held by the model's parameters and buffers."""
        if self._mlp is not None:
            return self._mlp.nbytes
        tensors = [*self._model.parameters(), *self._model.buffers()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def describe(self) -> str:
        """One line for the components report, e.g. ``"torch 2.13.0 cpu fp32"``,
        ``"torch 2.13.0 cuda:0 (NVIDIA H200) bf16"`` or ``"numpy (torch not installed)"``."""
        if self.backend == "numpy":
            return f"numpy ({self.fallback_reason})"
        return self.label()

    def label(self) -> str:
        """What runs the model, without why: :meth:`describe` less a NumPy fallback's
        reason (``"numpy"``)."""
        if self.backend == "numpy":
            return "numpy"
        where = self.device
        if where.startswith("cuda"):
            where = f"{where} ({self._torch.cuda.get_device_name(self.device)})"
        lost = f" (moved from {self.device_lost})" if self.device_lost else ""
        return f"torch {torch_version(self._torch)} {where} {self.precision}{lost}"

    @property
    def default_model(self) -> bool:
        """It runs the bundled model (TorchScript or its NumPy weights)."""
        return self.model_path in (DEFAULT_TORCHSCRIPT, DEFAULT_WEIGHTS)

    def info(self) -> dict[str, Any]:
        """``backend``, ``device``, ``precision``, ``model_path``, ``default_model``,
        ``input_width``, ``input_kind``, ``id_limit``, ``fallback_reason``, ``device_lost``
        and ``describe``."""
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "model_path": str(self.model_path),
            "default_model": self.default_model,
            "input_width": self.input_width,
            "input_kind": self.input_kind,
            "id_limit": self.id_limit,
            "fallback_reason": self.fallback_reason,
            "device_lost": self.device_lost,
            "describe": self.describe(),
        }


def _probability_answers(probs: Float64Array, n: int) -> Float64Array:
    """``probs`` if they are probabilities: :class:`InferenceError` for a non-finite value or
    one outside ``[0, 1]`` by more than ``_RANGE_TOLERANCE`` (a logit, a model without its
    sigmoid); values within the tolerance are clipped into ``[0, 1]``."""
    if not np.isfinite(probs).all():
        raise InferenceError(f"the model returned non-finite values for a batch of {n}")
    outside = (probs < -_RANGE_TOLERANCE) | (probs > 1.0 + _RANGE_TOLERANCE)
    if outside.any():
        row = int(np.argmax(outside))
        raise InferenceError(
            f"the model returned {float(probs[row])!r} at row {row} of a batch of {n}: not "
            "probabilities in [0, 1] (does the model end with a sigmoid?)"
        )
    np.clip(probs, 0.0, 1.0, out=probs)
    return probs
