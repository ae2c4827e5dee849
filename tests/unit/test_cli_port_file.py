"""``--port-file``: one that cannot be written stops a server before it serves, or,
failing after all, stops it cleanly (a real gRPC server, in process)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import pytest

from nethical_grpc.cli.serve import _announce, check_port_file
from nethical_grpc.server_runtime import start_server


def test_a_port_file_that_cannot_be_written_is_refused_before_serving(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"cannot write --port-file \S+/gone/p: No such file"):
        check_port_file(tmp_path / "gone" / "p")
    with pytest.raises(OSError, match=r"--port-file \S+ is a directory"):
        check_port_file(tmp_path)
    check_port_file(None)
    check_port_file(tmp_path / "port")
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind


async def test_a_port_file_that_fails_after_the_start_stops_the_server(tmp_path: Path) -> None:
    mesh = await start_server([], [], port=0, reflection_enabled=False)
    args = argparse.Namespace(no_reflection=True, host="127.0.0.1", port_file=tmp_path / "p")
    assert await _announce(mesh, "region node r1", args)
    assert (tmp_path / "p").read_text() == str(mesh.port)

    args.port_file = tmp_path / "gone" / "p"  # its directory removed meanwhile, say
    assert not await _announce(mesh, "region node r1", args)
    await asyncio.wait_for(mesh.wait(), 5)  # stopped, not left serving
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), 0.5)
