"""The micro-batcher: exact results, natural batches under load, errors reach every waiter."""

from __future__ import annotations

import asyncio
import threading

import pytest
from serving.batching import MicroBatcher


def test_concurrent_submissions_share_batches_and_get_their_own_results() -> None:
    release = threading.Event()
    seen: list[list[int]] = []

    def fn(xs: list[int]) -> list[int]:
        release.wait(5)  # hold the first batch until everyone is queued
        seen.append(xs)
        return [x * 10 for x in xs]

    async def main() -> list[int]:
        b = MicroBatcher(fn, max_batch_size=4)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(9)]
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(*tasks)
        b.close()
        return out

    assert asyncio.run(main()) == [i * 10 for i in range(9)]
    # all nine were queued before the loop ran the batcher: batches of <= 4, in order
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_a_lone_request_is_not_delayed() -> None:
    async def main() -> float:
        b = MicroBatcher(lambda xs: xs, max_batch_size=8)
        loop = asyncio.get_running_loop()
        t = loop.time()
        for i in range(20):
            assert await b.submit(i) == i
        b.close()
        return (loop.time() - t) / 20

    assert asyncio.run(main()) < 0.01


def test_max_wait_collects_a_batch() -> None:
    seen: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        seen.append(len(xs))
        return xs

    async def main() -> None:
        b = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.05)
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 4)]
        await asyncio.gather(first, *rest)
        b.close()

    asyncio.run(main())
    assert seen == [4]


def test_an_error_reaches_every_request_of_the_batch_and_the_batcher_recovers() -> None:
    def fn(xs: list[int]) -> list[int]:
        if 3 in xs:
            raise ValueError("boom")
        return xs

    async def main() -> None:
        b = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.02)
        results = await asyncio.gather(*(b.submit(i) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await b.submit(1) == 1
        b.close()

    asyncio.run(main())


def test_a_cancelled_waiter_does_not_break_the_batch() -> None:
    release = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        release.wait(5)
        return xs

    async def main() -> None:
        b = MicroBatcher(fn, max_batch_size=8)
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(b.submit(1))
        kept = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        release.set()
        assert await first == 0 and await kept == 2
        with pytest.raises(asyncio.CancelledError):
            await gone
        b.close()

    asyncio.run(main())


def _threads_of(alone: bool, n_concurrent: int) -> tuple[list[str], list[int], int]:
    """Where ``fn`` ran (thread names) for ``n_concurrent`` submissions made at once."""
    ran_on: list[str] = []

    def fn(xs: list[int]) -> list[int]:
        ran_on.append(threading.current_thread().name)
        return [x + 1 for x in xs]

    async def main() -> tuple[list[int], int]:
        b = MicroBatcher(fn, max_batch_size=8, alone=lambda: alone)
        out = await asyncio.gather(*(b.submit(i) for i in range(n_concurrent)))
        b.close()
        return list(out), b.inline

    out, inline = asyncio.run(main())
    return ran_on, out, inline


def test_a_lone_request_runs_on_the_event_loop_when_nothing_else_is_in_flight() -> None:
    ran_on, out, inline = _threads_of(alone=True, n_concurrent=1)
    assert out == [1] and inline == 1
    assert ran_on == [threading.main_thread().name]


def test_a_lone_request_goes_to_the_model_thread_when_others_are_in_flight() -> None:
    ran_on, out, inline = _threads_of(alone=False, n_concurrent=1)
    assert out == [1] and inline == 0
    assert ran_on[0].startswith("model")


def test_requests_arriving_together_are_batched_on_the_model_thread_even_if_alone_says_so() -> None:
    ran_on, out, inline = _threads_of(alone=True, n_concurrent=3)
    assert out == [1, 2, 3] and inline == 0
    assert len(ran_on) == 1 and ran_on[0].startswith("model")


def test_an_inline_error_reaches_the_waiter_and_the_batcher_recovers() -> None:
    def fn(xs: list[int]) -> list[int]:
        if xs == [3]:
            raise ValueError("boom")
        return xs

    async def main() -> None:
        b = MicroBatcher(fn, max_batch_size=8, alone=lambda: True)
        with pytest.raises(ValueError, match="boom"):
            await b.submit(3)
        assert await b.submit(1) == 1
        assert b.inline == 2
        b.close()

    asyncio.run(main())


def test_gathering_waits_for_as_many_requests_as_the_recent_batches() -> None:
    """``gather_s``: after a batch of 4, a request that comes alone waits (at most
    ``gather_s``) for the other 3, which arrive a little later: one batch of 4, not 1 + 3. A
    batcher that has only seen lone requests never waits."""
    seen: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        seen.append(len(xs))
        return [x * 10 for x in xs]

    async def main() -> MicroBatcher[int, int]:
        b = MicroBatcher(fn, max_batch_size=8, gather_s=5.0)
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert await b.submit(1) == 10  # recent batches: all of one -> no wait
        assert b.gathered == 0 and loop.time() - t < 1.0
        first = await asyncio.gather(*(b.submit(i) for i in range(4)))  # queued together
        assert first == [0, 10, 20, 30]
        early = asyncio.create_task(b.submit(4))
        await asyncio.sleep(0.02)  # the drainer is waiting for 3 more
        assert not early.done()
        late = [asyncio.create_task(b.submit(i)) for i in (5, 6, 7)]
        t = loop.time()
        assert await asyncio.gather(early, *late) == [40, 50, 60, 70]
        assert loop.time() - t < 1.0  # ran as soon as the fourth arrived, not after 5 s
        b.close()
        return b

    b = asyncio.run(main())
    assert seen == [1, 4, 4]
    assert b.gathered == 1 and b.gather_timeouts == 0


def test_gathering_gives_up_after_gather_s() -> None:
    """Fewer requests than the recent batches: the batch runs short after ``gather_s``, and
    the next one expects only as many as came."""
    seen: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        seen.append(len(xs))
        return xs

    async def main() -> tuple[MicroBatcher[int, int], float]:
        b = MicroBatcher(fn, max_batch_size=8, gather_s=0.05)
        await asyncio.gather(*(b.submit(i) for i in range(3)))
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert await b.submit(9) == 9
        waited = loop.time() - t
        assert await b.submit(8) == 8  # expects what came last time (1): no wait
        b.close()
        return b, waited

    b, waited = asyncio.run(main())
    assert seen == [3, 1, 1]
    assert b.gathered == 1 and b.gather_timeouts == 1
    assert 0.04 <= waited < 1.0
