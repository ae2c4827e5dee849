"""Channel and server options every process uses: message-size limits and keepalive."""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def _shared(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        *_shared(max_message_bytes),
        # clients keep pinging idle channels (health watchers); do not treat that as abuse
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        *_shared(max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 0),
        # a name whose address changed (a replaced pod) is resolved again within a second
        # of its connection failing, not gRPC's default 30 s
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
    ]
