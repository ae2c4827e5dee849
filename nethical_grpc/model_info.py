"""What a region node reports of its risk model (``ModelInfo`` in the contract)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """Which model, the width and layout of the rows it takes, and the engine running it."""

    name: str
    feature_width: int
    feature_version: str
    engine: str
