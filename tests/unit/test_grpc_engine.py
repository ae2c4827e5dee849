"""The gRPC I/O engine a command chooses before gRPC loads: what it sets in the
environment, what it leaves alone, and what it refuses."""

from __future__ import annotations

import grpc
import pytest

from nethical_grpc.grpc_engine import (
    CHECKED_GRPCIO,
    ENGINE_ENV,
    IOMGR_EXPERIMENTS,
    choose_io_engine,
    installed_grpcio,
)

CHECKED = ".".join(map(str, min(CHECKED_GRPCIO))) + ".3"


def test_the_default_is_iomgr_on_a_checked_grpcio() -> None:
    env: dict[str, str] = {}
    line = choose_io_engine(env, CHECKED)
    assert env == {"GRPC_EXPERIMENTS": IOMGR_EXPERIMENTS}
    assert line.startswith("gRPC I/O: iomgr")


@pytest.mark.parametrize("value", ["iomgr", " IOMGR ", ""])
def test_iomgr_by_name(value: str) -> None:
    env = {ENGINE_ENV: value}
    choose_io_engine(env, CHECKED)
    assert env["GRPC_EXPERIMENTS"] == IOMGR_EXPERIMENTS


def test_event_engine_leaves_grpc_to_its_default() -> None:
    env = {ENGINE_ENV: "event-engine"}
    line = choose_io_engine(env, CHECKED)
    assert env == {ENGINE_ENV: "event-engine"}
    assert "EventEngine" in line


def test_experiments_set_by_the_environment_are_left_as_they_are() -> None:
    env = {"GRPC_EXPERIMENTS": "-event_engine_client"}
    line = choose_io_engine(env, CHECKED)
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_client"}
    assert "-event_engine_client" in line
    # a process started by a command inherits that command's choice and says it
    inherited = {"GRPC_EXPERIMENTS": IOMGR_EXPERIMENTS}
    assert choose_io_engine(inherited, CHECKED).startswith("gRPC I/O: iomgr")
    assert inherited == {"GRPC_EXPERIMENTS": IOMGR_EXPERIMENTS}


@pytest.mark.parametrize("version", ["1.86.0", "2.0.0", "1", "unknown", None])
def test_an_unchecked_grpcio_keeps_its_default(version: str | None) -> None:
    env: dict[str, str] = {}
    line = choose_io_engine(env, version)
    assert env == {}
    assert f"grpcio {version}'s default" in line


@pytest.mark.parametrize("value", ["epoll", "event_engine", "1"])
def test_an_unknown_engine_is_refused(value: str) -> None:
    env = {ENGINE_ENV: value}
    with pytest.raises(ValueError, match=f"{ENGINE_ENV} must be iomgr or event-engine"):
        choose_io_engine(env, CHECKED)
    assert "GRPC_EXPERIMENTS" not in env


def test_the_installed_grpcio_is_read_without_loading_it() -> None:
    assert installed_grpcio() == grpc.__version__
