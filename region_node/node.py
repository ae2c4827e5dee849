"""The region node's domain object: identity, windows, ingest and summary queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nethical_grpc.series import GroupSummary, IngestBatch, SummaryQuery
from region_node.windows import WindowConfig, WindowStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    region_id: str
    instance_id: str
    # True when this node's store holds the whole region's data (shared store or a
    # replica fed the region's full stream); False when instances hold disjoint data.
    region_scope: bool = False


class RegionNode:
    """Holds a region node's state; the servicer calls it, nothing here knows gRPC."""

    def __init__(
        self,
        identity: NodeIdentity,
        windows: WindowConfig | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.store = WindowStore(windows, clock=clock)
        self._evictor: asyncio.Task[None] | None = None
        self.data_as_of_ns = 0

    def ingest(self, batch: IngestBatch) -> None:
        """Check and apply one batch atomically (raises before any change)."""
        self.store.check_times(batch, self.clock())
        self.store.check_capacity((batch.key,))
        self.store.apply(batch)

    def record_internal(self, batches: Sequence[IngestBatch]) -> None:
        """Apply observations the node made itself (already valid), all or none."""
        self.store.check_capacity(b.key for b in batches)
        for batch in batches:
            self.store.apply(batch)

    def summaries(self, query: SummaryQuery) -> list[GroupSummary]:
        return self.store.summaries(query)

    async def run_eviction(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            dropped = self.store.evict_expired()
            if dropped:
                log.debug("dropped %d windows past retention", dropped)

    def start_background(self, interval_s: float = 5.0) -> None:
        if self._evictor is None:
            self._evictor = asyncio.get_running_loop().create_task(self.run_eviction(interval_s))

    async def stop_background(self) -> None:
        if self._evictor is not None:
            self._evictor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evictor
            self._evictor = None
