"""Build and run a region node server."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nethical_grpc import evaluation_wire, telemetry
from nethical_grpc.governance.detect_pool import DetectionPool, default_workers
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.privacy import PrivacyConfig, PrivateReleaser
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.summary import _kernels
from nethical_grpc.v1 import region_node_pb2
from region_node.evaluation import Evaluator, warm_up
from region_node.model import ModelConfig, NodeModel
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.privacy_accounts import AccountsFile
from region_node.servicer import RegionNodeServicer, add_to_server
from region_node.stores import NodeStores, StoreConfig
from region_node.wal import WriteAheadLog
from region_node.windows import WindowConfig

log = logging.getLogger(__name__)

SERVICE_NAME = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"].full_name


@dataclass(frozen=True, slots=True)
class RegionServerConfig:
    region_id: str
    instance_id: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    windows: WindowConfig = field(default_factory=WindowConfig)
    region_scope: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 1000
    reflection: bool = True
    eviction_interval_s: float = 5.0
    # None: the node does not evaluate actions (Evaluate, Score answer UNAVAILABLE)
    model: ModelConfig | None = field(default_factory=ModelConfig)
    # worker processes detecting the findings of large evaluation batches (None: one when
    # the node may use two cores or more, see governance.detect_pool; 0: in process)
    detect_workers: int | None = None
    stores: StoreConfig = field(default_factory=StoreConfig)
    # write-ahead log directory: acknowledged batches survive a kill (None: no log)
    wal_dir: Path | None = None
    # differential privacy for the summaries that leave the region (None: exact)
    privacy: PrivacyConfig | None = None
    security: ServerSecurity = field(default_factory=ServerSecurity)
    # SERVING at once, the stored windows restored in the background (answers name what
    # is not back yet); False: NOT_SERVING until they are
    serve_while_restoring: bool = False


async def start_region_server(config: RegionServerConfig) -> tuple[MeshServer, RegionNode]:
    """Start a region node; returns the running server and its node (for in-process use)."""
    identity = NodeIdentity(
        region_id=config.region_id,
        instance_id=config.instance_id or f"{config.region_id}-{config.port or 'auto'}",
        region_scope=config.region_scope,
    )
    _kernels.warmup()  # compile (or load cached) JIT kernels before the first batch
    node = RegionNode(identity, config.windows)
    model = NodeModel.load(config.model) if config.model is not None else None
    if model is not None:
        warm_up(model)  # the evaluation's kernels, before the first call
        evaluation_wire.warm_up()  # and the stream answers' writer
    stores = await NodeStores.open(config.stores, config.region_id)
    if not config.instance_id and stores.shared_timeseries:
        log.warning(
            "no --instance-id on a shared time-series store: this node is %s-<port>, and "
            "another node of the region on the same port (another host) would overwrite "
            "its flushed windows; give each instance its own id",
            config.region_id,
        )
    # each store's state, read at every scrape: a failing store or a fallback is alertable
    telemetry.get_recorder().observe_stores(
        lambda: [(c.store, c.backend, not c.problem, bool(c.reason)) for c in stores.choices()]
    )
    telemetry.get_recorder().observe_store_evictions(stores.evictions)
    if config.privacy is None:  # as in GetNodeInfo: exact counts would tell the noised groups
        telemetry.get_recorder().observe_windows(node.store.held)
    telemetry.get_recorder().observe_gaps(node.gap_reasons)
    pool: DetectionPool | None = None
    wal: WriteAheadLog | None = None
    try:
        _check_wal_store(config, stores)
        # values are clipped on the way in, the log's included
        node.privacy = config.privacy
        profiles = ProfileBook()
        persister = Persister(node, stores, profiles, config.stores.flush_interval_s)
        if config.wal_dir is not None:
            # before the server takes a batch: each is logged, and a retry of a logged
            # one is known
            wal = WriteAheadLog(config.wal_dir)
            if persister.durable_store:
                # the restore applies the log's batches the stored windows lack
                held = node.hold_wal(wal)
                log.info("write-ahead log %s: %d batches to replay", config.wal_dir, held)
            else:
                replayed = node.hold_wal(wal, apply=True)
                log.warning(
                    "write-ahead log %s (%d batches replayed) on an in-memory time-series "
                    "store: the log is the only copy of the windows' data, so it keeps the "
                    "batches of the whole retention (%g s) and a restart replays them all; "
                    "give --timeseries-url a SQLite file or PostgreSQL for a log that each "
                    "flush trims",
                    config.wal_dir,
                    replayed,
                    config.windows.retention_ns / 1e9,
                )
            telemetry.get_recorder().observe_wal(wal.size)
        workers = default_workers() if config.detect_workers is None else config.detect_workers
        pool = DetectionPool(workers) if model is not None and workers > 0 else None
        evaluator = (
            Evaluator(
                model,
                node,
                profiles=profiles,
                sink=persister.enqueue,
                profile_source=persister.profile_writer.load,
                detection_pool=pool,
                admission=persister.room,
            )
            if model is not None
            else None
        )
        releaser = None
        if config.privacy is not None:
            releaser = PrivateReleaser(config.privacy, window_ns=config.windows.window_ns)
            _keep_accounts(releaser, config.wal_dir)
            node.privacy_releaser = releaser
        servicer = RegionNodeServicer(
            node, evaluator, stores, releaser, max_message_bytes=config.max_message_bytes
        )
        mesh = await start_server(
            [lambda s: add_to_server(servicer, s)],
            [SERVICE_NAME],
            host=config.host,
            port=config.port,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            reflection_enabled=config.reflection,
            serving=False,  # until persisted windows are back
            security=config.security,
        )
    except BaseException:
        # closed last first, each whatever another's close raises: the stores' too
        async with contextlib.AsyncExitStack() as opened:
            opened.push_async_callback(stores.close)
            if wal is not None:  # lets go of its directory (a retried start opens it)
                opened.callback(wal.close)
            if pool is not None:
                opened.push_async_callback(pool.close)
        raise
    if not config.instance_id:
        # the bound port names an auto instance when none was given
        node.identity = NodeIdentity(
            identity.region_id, f"{identity.region_id}-{mesh.port}", identity.region_scope
        )
    # stop order: background work, then the last writes, then the stores (set before the
    # restore: a start that fails or is cancelled from here on stops it all)
    mesh.on_drain.append(servicer.end_streams)
    mesh.on_stop.append(node.stop_background)
    if model is not None:
        mesh.on_stop.append(model.close)
    if pool is not None:
        mesh.on_stop.append(pool.close)
    mesh.on_stop.append(persister.stop)
    mesh.on_stop.append(stores.close)
    if node.wal is not None:
        mesh.on_stop.append(_closer(node.wal))
    try:
        if config.serve_while_restoring:
            persister.start_soon()
        else:
            try:
                # the log's batches are applied once the store said which segments it
                # holds, before the stored windows are installed (see Persister.restore)
                await persister.start()
            except Exception as exc:  # the loop retries it; windows flushed once it succeeds
                log.warning(
                    "restoring persisted windows failed (retried in the background): %s", exc
                )
        node.start_background(config.eviction_interval_s)
        await mesh.set_serving(True)
    except BaseException:  # cancelled (a stop while restoring), say
        await mesh.drain(announce_s=0.0, grace_s=0.0)
        raise
    return mesh, node


def _keep_accounts(releaser: PrivateReleaser, wal_dir: Path | None) -> None:
    """Budgets spent before a restart stay spent: with a write-ahead log directory they
    are read back now and saved after every charge (see region_node.privacy_accounts)."""
    if wal_dir is None:
        log.warning(
            "privacy budgets are kept in memory only: a restart starts them afresh while "
            "the windows come back; give --wal-dir to keep them"
        )
        return
    accounts = AccountsFile(wal_dir)
    read = accounts.load(releaser.accountant)
    log.info("privacy accounts %s: %d read", accounts.path, read)
    accountant = releaser.accountant
    releaser.on_charge = lambda: accounts.save(accountant)


def _closer(wal: WriteAheadLog) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        wal.close()

    return close


def _check_wal_store(config: RegionServerConfig, stores: NodeStores) -> None:
    """Refuse to start when the write-ahead log says windows were flushed to the
    time-series store and that store fell back: the node would serve the log's tail
    without the flushed windows (an undercount), and refuse the clients' re-sends of
    those batches as duplicates. Started again once the store answers, it is whole."""
    if config.wal_dir is None or not stores.timeseries_choice.fallback:
        return
    if WriteAheadLog.peek_checkpointed(config.wal_dir):
        choice = stores.timeseries_choice
        raise OSError(
            f"the write-ahead log in {config.wal_dir} has batches already flushed to the "
            f"time-series store {choice.requested}, which is {choice.reason}: starting now "
            "would serve only the log's tail; start again once the store answers"
        )
