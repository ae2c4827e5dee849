"""Channel and server options every process uses: message-size limits and keepalive."""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


#: Keepalive of every channel and server: a ping after 30 s, the peer gone after 10 s more.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
#: Keepalive of the coordinator's (the balancer's) channels to region nodes: a node that
#: stopped running (SIGSTOP, a frozen VM) keeps its TCP connection and its health stream
#: open, and only an unanswered ping tells; measured, a hung node went from SERVING to
#: UNREACHABLE 5-12 s after it stopped (was ~62-90 s with the defaults above). The
#: servers' ping policy (``server_options``: one ping per 5 s allowed, with or without
#: calls) accepts a ping every 10 s; so must any server these channels reach.
NODE_KEEPALIVE_TIME_MS = 10_000
NODE_KEEPALIVE_TIMEOUT_MS = 5_000
_SERVER_MIN_PING_INTERVAL_MS = 5_000


def _shared(
    max_message_bytes: int,
    keepalive_time_ms: int = KEEPALIVE_TIME_MS,
    keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS,
) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        # grpc core (1.85) waits this long for a keepalive ping's ack, not
        # ``keepalive_timeout_ms``: without it a stopped peer is seen 60 s after the ping
        # (measured: 90 s with the 30 s keepalive), not the 10 s said above
        ("grpc.http2.ping_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        *_shared(max_message_bytes),
        # clients keep pinging idle channels (health watchers); do not treat that as abuse
        ("grpc.http2.min_ping_interval_without_data_ms", _SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    keepalive_time_ms: int = KEEPALIVE_TIME_MS,
    keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS,
) -> list[tuple[str, int]]:
    if keepalive_time_ms < _SERVER_MIN_PING_INTERVAL_MS:
        # the mesh's servers would answer GOAWAY too_many_pings
        raise ValueError(f"keepalive_time_ms must be >= {_SERVER_MIN_PING_INTERVAL_MS}")
    return [
        *_shared(max_message_bytes, keepalive_time_ms, keepalive_timeout_ms),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 0),
        # a name whose address changed (a replaced pod) is resolved again within a second
        # of its connection failing, not gRPC's default 30 s
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
    ]


def node_channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[tuple[str, int]]:
    """``channel_options`` for the coordinator's channels to region nodes: the shorter
    keepalive (``NODE_KEEPALIVE_*``), pings that go on while no data flows (the health
    Watch stream is always open and mostly silent; gRPC's default stops pinging after 2
    pings without data), and a ping timeout as short as that keepalive's timeout (see
    ``_shared``); measured, a hung node took 70 s to be seen with the 10 s keepalive
    alone, 5-12 s with this."""
    return [
        *channel_options(
            max_message_bytes,
            keepalive_time_ms=NODE_KEEPALIVE_TIME_MS,
            keepalive_timeout_ms=NODE_KEEPALIVE_TIMEOUT_MS,
        ),
        ("grpc.http2.max_pings_without_data", 0),
    ]
