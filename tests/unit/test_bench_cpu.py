"""What the benchmarks share: the CPU they report (a process's time and its children's,
other processes'), and their environment arguments."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import common

#: A child that spends ``argv[1]`` seconds of CPU (once the file ``argv[2]`` exists, when
#: named), says so, then waits to be killed.
_BURNER = """
import os, sys, time
while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
stop = time.process_time() + float(sys.argv[1])
while time.process_time() < stop:
    pass
print("done", flush=True)
time.sleep(60)
"""


def burn(seconds: float) -> None:
    stop = time.process_time() + seconds
    while time.process_time() < stop:
        pass


def test_a_process_cpu_grows_by_what_it_spends() -> None:
    before = common.cpu_seconds([os.getpid()])
    assert before > 0
    burn(0.3)
    after = common.cpu_seconds([os.getpid()])
    # clock ticks are 10 ms; the interpreter spent at least the 0.3 s it burned
    assert 0.25 <= after - before <= 5.0


def test_the_processes_a_process_started_count_with_it() -> None:
    before = common.cpu_seconds([os.getpid()])
    child = subprocess.Popen(
        [sys.executable, "-c", _BURNER, "0.6"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "done"
        alone = common.cpu_seconds([child.pid])
        with_children = common.cpu_seconds([os.getpid()])
        assert alone >= 0.5  # the child's own burn (its start-up adds to it)
        # ours grew by at least the child's time: it is counted under us while it lives
        assert with_children - before >= alone - 0.05
        # each process counts once even when named twice, or with its parent
        both = common.cpu_seconds([os.getpid(), child.pid, child.pid])
        assert both - with_children < 0.2
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_not_there_costs_nothing() -> None:
    beyond = 2**31 - 1  # past any system's largest pid: no process has it
    assert common.cpu_seconds([beyond]) == 0.0
    assert common.cpu_seconds([]) == 0.0


def test_cpu_per_unit() -> None:
    assert common.cpu_per(1.0, 2.0, 4, 1e3) == 250.0
    assert common.cpu_per(1.0, 1.0000004, 1, 1e6) == 0.4
    assert common.cpu_per(1.0, 2.0, 0, 1e6) is None


def test_thread_usage_grows_by_the_cpu_spent() -> None:
    cpu, switches = common.thread_usage([os.getpid()])
    burn(0.3)
    cpu_after, switches_after = common.thread_usage([os.getpid()])
    assert 0.25 <= cpu_after - cpu <= 5.0
    assert switches_after >= switches


def test_thread_usage_sees_a_live_threads_sleeps() -> None:
    done = threading.Event()
    slept = threading.Event()

    def sleeper() -> None:
        for _ in range(40):
            time.sleep(0.002)
        slept.set()
        done.wait(10)  # alive while we count

    thread = threading.Thread(target=sleeper)
    before = common.thread_usage([os.getpid()])[1]
    thread.start()
    try:
        assert slept.wait(10)
        after = common.thread_usage([os.getpid()])[1]
    finally:
        done.set()
        thread.join()
    if sys.platform == "linux":
        assert after - before >= 40
    else:  # psutil counts the main thread's switches only
        assert after >= before


def test_thread_usage_of_no_process_is_nothing() -> None:
    assert common.thread_usage([2**31 - 1]) == (0.0, 0)
    assert common.thread_usage([]) == (0.0, 0)


#: Starts ``_BURNER`` (arguments 2 and 3) as a process of its own (not a descendant of the test: its
#: parent exits at once), and prints its pid.
_DETACHED = """
import subprocess, sys
burner = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], *sys.argv[2:4]],
    stdin=subprocess.DEVNULL,
    stdout=open(sys.argv[4], "w"),
    stderr=subprocess.DEVNULL,  # the caller waits for its pipes to close
    start_new_session=True,
)
print(burner.pid, flush=True)
"""


def _wait_for_done(path: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.read_text().strip() == "done":
            return
        time.sleep(0.02)
    raise AssertionError("the burner did not finish")


def test_other_processes_see_a_burner_that_is_not_ours(tmp_path: Path) -> None:
    go, out = tmp_path / "go", tmp_path / "burner.out"
    out.write_text("")
    starter = subprocess.run(
        [sys.executable, "-c", _DETACHED, _BURNER, "0.6", str(go), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(starter.stdout)
    try:
        others = common.OtherProcesses()  # the burner is there, waiting
        began = time.monotonic()
        go.write_text("")
        _wait_for_done(out)
        report = others.report(top=3)
        seconds = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGKILL)
    # the burner spent >= 0.6 s of CPU (clock ticks of 10 ms), as a rate over the
    # measurement; the machine's services add theirs to the total
    floor = 0.55 / seconds * 1e3
    assert report["cpu_ms_per_s"] >= floor
    assert report["busiest"][0]["cpu_ms_per_s"] >= floor
    assert len(report["busiest"]) <= 3
    rates = [b["cpu_ms_per_s"] for b in report["busiest"]]
    assert rates == sorted(rates, reverse=True)


def test_other_processes_leave_out_the_benchmarks_own() -> None:
    # what the machine's other processes spend anyway, over a like interval (a busy
    # machine's services are not the benchmark's own)
    quiet = common.OtherProcesses()
    time.sleep(1.0)
    background = quiet.report()["cpu_ms_per_s"]
    others = common.OtherProcesses()
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", _BURNER, "0.6"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "done"
        burn(0.3)  # and this process's own
        report = others.report()
        seconds = time.monotonic() - began
    finally:
        child.kill()
        child.wait()
    # 0.9 s of ours over about a second is left out: what remains is the machine's
    # services, about what they spent before, well short of ours
    assert report["cpu_ms_per_s"] < background + 0.3 / seconds * 1e3


def test_environment_arguments() -> None:
    assert common.environment([]) == {}
    assert common.environment(["A=1", "B=x=y", "C=", "A=2"]) == {"A": "2", "B": "x=y", "C": ""}
    for bad in ("A", "=1", ""):
        with pytest.raises(ValueError, match="expected NAME=VALUE"):
            common.environment([bad])


def test_environment_option_refuses_a_malformed_item_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    common.add_environment_option(parser, "--mesh-env", "the mesh's processes")
    args = parser.parse_args(["--mesh-env", "A=1", "--mesh-env", "A=2", "--mesh-env", "B="])
    assert common.environment(args.mesh_env) == {"A": "2", "B": ""}
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--mesh-env", "A=1", "--mesh-env", "nothing"])
    assert exit_.value.code == 2
    assert "argument --mesh-env: expected NAME=VALUE, got 'nothing'" in capsys.readouterr().err
