"""``nethical_grpc.inference.microbatch.MicroBatcher`` under concurrent load."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nethical_grpc.inference import FEATURE_WIDTH, InferenceEngine, MicroBatcher


class Recorder:
    """Batch function answering ``2 * row[0] + row[1]``, recording each batch it sees."""

    def __init__(self, poison: float | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.poison = poison
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.copy())
        self.threads.add(threading.current_thread().name)
        if self.poison is not None and np.any(x[:, 0] == self.poison):
            raise RuntimeError("poisoned batch")
        out: np.ndarray = 2.0 * x[:, 0] + x[:, 1]
        return out


def distinct_rows(n: int) -> np.ndarray:
    rows = np.zeros((n, 3))
    rows[:, 0] = np.arange(n)
    rows[:, 1] = np.arange(n) * 1e-3
    return rows


async def test_every_caller_gets_its_own_answer_in_real_batches() -> None:
    fn = Recorder()
    rows = distinct_rows(1000)
    async with MicroBatcher(fn, max_batch=64, max_delay_s=0.005) as batcher:
        answers = await asyncio.gather(*(batcher.submit(r) for r in rows))
    assert answers == list(2.0 * rows[:, 0] + rows[:, 1])
    sizes = [len(b) for b in fn.batches]
    assert sum(sizes) == 1000
    assert len(fn.batches) < 1000  # batches were formed
    assert max(sizes) <= 64
    assert batcher.stats.batches == len(fn.batches)
    assert batcher.stats.max_batch_seen == max(sizes)
    assert batcher.stats.mean_batch == pytest.approx(1000 / len(sizes))
    seen = np.sort(np.concatenate([b[:, 0] for b in fn.batches]))
    assert np.array_equal(seen, rows[:, 0])  # each row sent exactly once
    assert all(name.startswith("microbatch") for name in fn.threads)  # not on the loop thread


async def test_an_error_reaches_only_the_caller_whose_rows_fail() -> None:
    """The batch holding the poisoned row fails; its callers' rows run again one caller
    at a time, so the others sharing that batch get their answers."""
    fn = Recorder(poison=37.0)
    rows = distinct_rows(200)
    async with MicroBatcher(fn, max_batch=16, max_delay_s=0.01) as batcher:
        results = await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)
    poisoned = next(b for b in fn.batches if np.any(b[:, 0] == 37.0))
    assert len(poisoned) > 1  # shared with others
    for i, res in enumerate(results):
        if i == 37:
            assert isinstance(res, RuntimeError)
            assert str(res) == "poisoned batch"
        else:
            assert res == 2.0 * rows[i, 0] + rows[i, 1]
    # the shared batch and the poisoned caller's own run again
    assert batcher.stats.failed_batches == 2


async def test_a_bad_row_fails_only_its_caller() -> None:
    engine = InferenceEngine(backend="numpy")
    good = np.random.default_rng(3).random((20, FEATURE_WIDTH), dtype=np.float32)
    bad = good[0].copy()
    bad[5] = np.nan
    async with MicroBatcher(
        engine.predict_batch, max_batch=32, validate=engine.validate_input
    ) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(r) for r in [*good[:10], bad, *good[10:]]),
            batcher.submit(np.zeros(7)),
            batcher.submit(good[:2]),
            return_exceptions=True,
        )
    expected = engine.predict_batch(good)
    answers = [r for i, r in enumerate(results[:21]) if i != 10]
    assert all(isinstance(a, float) for a in answers)
    assert np.allclose(np.array(answers, dtype=np.float64), expected, atol=1e-6)
    assert isinstance(results[10], ValueError)
    assert "non-finite" in str(results[10])
    assert isinstance(results[21], ValueError)
    assert "columns" in str(results[21])
    assert isinstance(results[22], ValueError)
    assert "1-D row" in str(results[22])


async def test_submit_many_keeps_order_and_splits_large_requests() -> None:
    fn = Recorder()
    rows = distinct_rows(100)
    async with MicroBatcher(fn, max_batch=32, max_delay_s=0.002) as batcher:
        a, b, c = await asyncio.gather(
            batcher.submit_many(rows[:70]),
            batcher.submit_many(rows[70:]),
            batcher.submit_many(np.zeros((0, 3))),
        )
    assert np.array_equal(a, 2.0 * rows[:70, 0] + rows[:70, 1])
    assert np.array_equal(b, 2.0 * rows[70:, 0] + rows[70:, 1])
    assert c.shape == (0,)
    assert max(len(x) for x in fn.batches) <= 32
    with pytest.raises(ValueError, match="2-D array"):
        await MicroBatcher(fn).submit_many(rows[0])


async def test_close_drains_queued_rows_then_refuses_new_ones() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=8, max_delay_s=5.0)
    tasks = [asyncio.create_task(batcher.submit(r)) for r in distinct_rows(30)]
    await asyncio.sleep(0)  # let every task queue its row
    await batcher.close()  # must not wait the 5 s delay
    assert all(t.done() for t in tasks)
    assert [t.result() for t in tasks] == [2.0 * i + i * 1e-3 for i in range(30)]
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit(np.zeros(3))
    await batcher.close()  # idempotent


async def test_event_loop_stays_free_while_fn_runs() -> None:
    released = threading.Event()
    saw_release: list[bool] = []

    def blocking(x: np.ndarray) -> np.ndarray:
        saw_release.append(released.wait(timeout=10))
        return x[:, 0]

    async def release_from_the_loop() -> None:
        await asyncio.sleep(0.01)
        released.set()

    async with MicroBatcher(blocking, max_batch=4, max_delay_s=0.0) as batcher:
        value, _ = await asyncio.gather(batcher.submit(np.array([3.0])), release_from_the_loop())
    assert value == 3.0
    assert saw_release == [True]  # the loop ran release_from_the_loop while fn was blocked


async def test_cancelled_caller_is_left_out() -> None:
    fn = Recorder()
    async with MicroBatcher(fn, max_batch=8, max_delay_s=0.05) as batcher:
        rows = distinct_rows(3)
        doomed = asyncio.create_task(batcher.submit(rows[0]))
        kept = [asyncio.create_task(batcher.submit(r)) for r in rows[1:]]
        await asyncio.sleep(0)
        doomed.cancel()
        results = await asyncio.gather(*kept)
    assert results == [2.0 * 1 + 1e-3, 2.0 * 2 + 2e-3]
    assert 0.0 not in np.concatenate([b[:, 0] for b in fn.batches])


async def test_wrong_result_shape_is_an_error_for_the_batch() -> None:
    async with MicroBatcher(lambda x: np.zeros(len(x) + 1), max_delay_s=0.0) as batcher:
        with pytest.raises(RuntimeError, match="returned shape"):
            await batcher.submit(np.zeros(3))


async def test_external_executor_is_not_shut_down() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        batcher = MicroBatcher(Recorder(), executor=pool, max_delay_s=0.0)
        assert await batcher.submit(np.array([1.0, 2.0])) == 4.0
        await batcher.close()
        assert pool.submit(lambda: 5).result() == 5


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError, match="max_delay_s"):
        MicroBatcher(Recorder(), max_delay_s=-1)
    with pytest.raises(ValueError, match="max_delay_s"):
        MicroBatcher(Recorder(), max_delay_s=float("nan"))


async def test_inline_batches_run_on_the_loop_and_still_batch_concurrent_rows() -> None:
    calls: list[tuple[int, str]] = []

    def fn(rows: np.ndarray) -> np.ndarray:
        calls.append((rows.shape[0], threading.current_thread().name))
        return rows[:, 0] * 2.0

    batcher = MicroBatcher(fn, max_batch=64, max_delay_s=0.0, inline=True)
    try:
        rows = [np.array([float(i), 0.0]) for i in range(500)]
        results = await asyncio.gather(*(batcher.submit(r) for r in rows))
    finally:
        await batcher.close()
    assert results == [2.0 * i for i in range(500)]
    assert len(calls) < 500  # concurrent rows shared calls
    assert max(n for n, _ in calls) <= 64
    assert {name for _, name in calls} == {threading.current_thread().name}


def test_inline_with_an_executor_is_refused() -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="inline"):
        MicroBatcher(lambda r: r[:, 0], executor=pool, inline=True)


@pytest.mark.parametrize("turns_after_cancel", [0, 3])
async def test_rows_of_a_cancelled_caller_do_not_count_towards_a_full_batch(
    turns_after_cancel: int,
) -> None:
    fn = Recorder()
    # a delay far longer than the test: only a full batch (4 live rows) is sent early
    batcher = MicroBatcher(fn, max_batch=4, max_delay_s=10.0, inline=True)
    try:
        rows = distinct_rows(7)
        first = asyncio.create_task(batcher.submit(rows[0]))
        gone = asyncio.create_task(batcher.submit_many(rows[1:4]))
        await asyncio.sleep(0)  # both queued: 4 rows, the worker is woken
        gone.cancel()  # its caller goes away before the batch starts
        for _ in range(turns_after_cancel):
            await asyncio.sleep(0)
        later = asyncio.create_task(batcher.submit(rows[4]))
        rest = asyncio.create_task(batcher.submit_many(rows[5:7]))
        answers = await asyncio.wait_for(asyncio.gather(first, later, rest), 5.0)
    finally:
        await batcher.close()
    assert answers[0] == 2.0 * rows[0, 0] + rows[0, 1]
    assert answers[1] == 2.0 * rows[4, 0] + rows[4, 1]
    # one batch of the four live rows: the cancelled caller's rows neither went to the
    # model nor made the first row go alone before the others came
    assert [b[:, 0].tolist() for b in fn.batches] == [[0.0, 4.0, 5.0, 6.0]]
    assert batcher._queued_rows == 0


async def test_submit_apart_fails_only_the_rows_that_fail_alone() -> None:
    engine = InferenceEngine(backend="numpy")
    rows = np.random.default_rng(5).random((6, FEATURE_WIDTH), dtype=np.float32)
    expected = engine.predict_batch(rows)
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:  # the model fails on any batch holding row 4
        calls.append(x.shape[0])
        if np.any(np.all(x == rows[4], axis=1)):
            raise RuntimeError("the model failed")
        return engine.predict_batch(x)

    given = rows.astype(np.float64)
    given[2, 7] = np.nan  # refused by validation, before the model
    async with MicroBatcher(
        fn, max_batch=32, max_delay_s=0.0, validate=engine.validate_input
    ) as batcher:
        answers = await batcher.submit_apart(given)
        assert await batcher.submit_apart(np.zeros((0, FEATURE_WIDTH))) == []
        with pytest.raises(ValueError, match="2-D"):
            await batcher.submit_apart(given[0])
    assert len(answers) == 6
    assert isinstance(answers[2], ValueError) and "non-finite" in str(answers[2])
    assert isinstance(answers[4], RuntimeError)
    for i in (0, 1, 3, 5):
        answer = answers[i]
        assert isinstance(answer, np.ndarray) and answer.shape == (1,)
        assert answer[0] == pytest.approx(expected[i], abs=1e-6)
    assert calls[0] == 5  # the valid rows shared one call, then each ran alone
    assert sorted(calls[1:]) == [1] * 5
