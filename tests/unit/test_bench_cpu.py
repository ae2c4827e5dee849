"""The CPU accounting the benchmarks report: a process's time and its children's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from bench import common

#: A child that spends ``argv[1]`` seconds of CPU, says so, then waits to be killed.
_BURNER = """
import sys, time
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
