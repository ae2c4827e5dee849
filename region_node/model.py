"""The node's risk model: the inference engine behind a micro-batcher.

Concurrent evaluations (unary calls, stream chunks, Score requests) submit feature rows to
one :class:`~nethical_grpc.inference.microbatch.MicroBatcher`; it stacks whatever arrived
within a bounded delay (up to a bounded batch) into one engine call, run on a worker thread
so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from nethical_grpc.governance.detectors import Action
from nethical_grpc.inference.engine import InferenceEngine
from nethical_grpc.inference.errors import ModelLoadError
from nethical_grpc.inference.features import FEATURE_VERSION, action_features
from nethical_grpc.inference.microbatch import Answer, MicroBatcher, answer_apart
from nethical_grpc.inference.threads import limit_threads
from nethical_grpc.model_info import ModelSummary

#: How GetNodeInfo names the bundled model.
DEFAULT_MODEL_NAME = "default-mlp"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Where the model comes from and how it runs (see ``nethical-mesh region --help``)."""

    model_path: Path | None = None
    device: str = "auto"
    precision: str = "fp32"
    max_batch: int = 256
    # 0: a batch goes as soon as the model is free; rows that arrive meanwhile wait for
    # the next one, so batches grow with load without delaying a lone request
    max_delay_s: float = 0.0
    # CPU threads for the model and the numeric libraries under it (BLAS, Numba, torch);
    # one thread measured faster than their defaults here (see nethical_grpc.inference.threads)
    num_threads: int | None = 1
    # "auto": the bundled fp32 model runs in NumPy (same outputs within 5e-8, measured
    # faster per Evaluate on a CPU and on a GPU host) unless a CUDA device is named; a
    # --model TorchScript file, or fp16/bf16, runs in PyTorch (on a GPU when one is
    # usable), a --model .npz weights file in NumPy
    backend: str = "auto"


class NodeModel:
    """Implements :class:`region_node.evaluation.RiskModel` on an :class:`InferenceEngine`."""

    def __init__(self, engine: InferenceEngine, max_batch: int = 256, max_delay_s: float = 0.0):
        self.engine = engine
        self._batcher: MicroBatcher | None = None
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s

    @classmethod
    def load(cls, config: ModelConfig) -> NodeModel:
        """Load the engine (raises ``ModelLoadError`` with a clear message on a bad model)."""
        backend = config.backend
        reason = "requested with --model-backend numpy"
        if (
            backend == "auto"
            and config.model_path is None
            and config.precision == "fp32"
            and config.device in ("auto", "cpu")
        ):
            # measured (bench/evaluate.py --node-arg=--device=...): the bundled model is too
            # small for a GPU to pay; a node on an H200 host served 1.5-1.7x the Evaluate
            # calls with it in NumPy than on CUDA
            backend = "numpy"
            reason = (
                "the bundled model runs in NumPy, faster per Evaluate than PyTorch on a CPU "
                "or a GPU; --device cuda or --model-backend torch for PyTorch"
            )
        engine = InferenceEngine(
            model_path=config.model_path,
            device=config.device,
            precision=config.precision,
            num_threads=config.num_threads,
            backend=backend,
            numpy_reason=reason,
        )
        if engine.input_kind != "float":
            raise ModelLoadError(
                f"{engine.model_path} takes integer ids, but a region node scores the float "
                "features it computes from each action (hashed character n-grams and numeric "
                "features, nethical_grpc.inference.features); such a model can be used "
                "through InferenceEngine directly"
            )
        if config.num_threads is not None:
            # BLAS and Numba too, not only torch: idle pools fight for a small host's cores
            limit_threads(config.num_threads)
        return cls(engine, config.max_batch, config.max_delay_s)

    @property
    def feature_width(self) -> int:
        return int(self.engine.input_width)

    def describe(self) -> str:
        return self.engine.describe()

    def label(self) -> str:
        """The model and what runs it, e.g. ``"default-mlp numpy"`` or ``"risk.pt torch
        2.13.0 cpu fp32"`` (a Score answer's ``model``)."""
        return f"{self._name()} {self.engine.label()}"

    def _name(self) -> str:
        return DEFAULT_MODEL_NAME if self.engine.default_model else self.engine.model_path.name

    def summary(self) -> ModelSummary:
        """What GetNodeInfo says of the model: which one, the rows it takes, its engine."""
        return ModelSummary(
            name=self._name(),
            feature_width=self.feature_width,
            # the node feeds every model the features it computes itself
            feature_version=FEATURE_VERSION,
            engine=self.describe(),
        )

    def features(self, actions: Sequence[Action]) -> npt.NDArray[np.float32]:
        return action_features([a.action_text for a in actions], [a.stated_intent for a in actions])

    def _batcher_now(self) -> MicroBatcher:
        if self._batcher is None:
            self._batcher = MicroBatcher(
                self.engine.predict_batch,
                max_batch=self._max_batch,
                max_delay_s=self._max_delay_s,
                validate=self.engine.validate_input,
                # on a CPU the thread hop costs more than the model: run it on the loop
                inline=self.engine.device == "cpu",
            )
        return self._batcher

    async def probabilities(
        self, rows: npt.NDArray[np.float32], *, batched: bool = False
    ) -> npt.NDArray[np.float64]:
        """Probability of harm per row.

        Rows go through the micro-batcher, so concurrent callers share a model call.
        ``batched=True`` says the caller already stacked concurrent work (the evaluator
        coalesces concurrent calls): on a CPU, where the model runs on the event loop
        anyway, the rows then go straight to the engine, without the batcher's hops.
        """
        if batched and self.engine.device == "cpu":
            return self.engine.predict_batch(rows)  # validates the rows
        if rows.shape[0] > self._max_batch:
            # a large batch is a batch already: straight to a worker thread
            self.engine.validate_input(rows)
            return await asyncio.to_thread(self.engine.predict_batch, rows)
        return await self._batcher_now().submit_many(rows)

    async def probabilities_apart(self, rows: npt.NDArray[np.float32]) -> list[float | Exception]:
        """Probability of harm per row, each row a different caller's (the evaluator's
        coalesced single calls): a row's answer is its probability, or the exception the
        model raised on that row alone, so a row the model fails on fails no other.

        The rows go to the model in one call, as with ``batched=True`` (straight to the
        engine on a CPU, through the micro-batcher elsewhere); only when that call fails
        does each row run again on its own (:func:`answer_apart`, the micro-batcher's own
        isolation).
        """
        n = int(rows.shape[0])
        answers: list[Answer]
        if self.engine.device == "cpu":
            engine = self.engine

            async def call(part: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
                return engine.predict_batch(part)  # validates the rows

            answers = await answer_apart(call, rows, [1] * n)
        else:
            answers = await self._batcher_now().submit_apart(rows)
        return [a if isinstance(a, Exception) else float(a[0]) for a in answers]

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
