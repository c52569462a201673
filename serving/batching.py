"""A micro-batcher for model calls: concurrent requests share one ``score`` call.

Why not BentoML's ``batchable=True``: it needs a list-typed endpoint (our endpoints take one
pydantic body and also do store I/O) or a second service behind an extra HTTP hop. This
batcher sits inside the one endpoint instead. With ``max_wait_s = 0`` it never delays a
request: a lone request runs at once, and the requests that arrive while a batch is being
scored form the next batch ("natural" batching). Batches run on one dedicated thread, so the
event loop keeps parsing requests while torch (which releases the GIL) computes.

Handing a batch to that thread and back costs two thread wake-ups, 1-2 ms over HTTP on a
2-core VM (experiments/2026-12-04-serving-s8.md): most of the gap between batching on and off
at concurrency 1. So a batch of one,
when ``alone()`` says nothing else is in flight (the service counts its open requests), runs
on the event loop itself: there is nobody to keep serving meanwhile. Under concurrency the
requests that arrive together still form batches on the thread.

Gathering (``gather_s > 0``). A batch's cost is mostly fixed (for the Diginetica GRU4Rec,
in-process: 3.6 ms for one session, 8 ms for 4, 11-14 ms for 8), so at concurrency 8 the
natural batches, which split the 8 waiting clients into alternating pairs such as 2 + 6 or
3 + 5, cost more per request than one batch of 8. So before forming a batch the drainer waits,
at most ``gather_s``, for the queue to hold as many requests as the largest of the last 8
batches: under steady concurrency that is every client, and at concurrency 1 (last batches
of one) it never waits. When the wait runs out with fewer requests, the history is reset to
the batch that did form, so a passing burst costs at most one wasted wait. Measured
(experiments/2026-12-05-serving-s9.md): +13-25% req/s with 8 closed-loop clients, but with
Poisson arrivals at 100 and 250 req/s it raised p50 and p95, so the service's default is 0.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """``await submit(x)`` returns ``fn([..., x, ...])[i]``; ``fn`` maps a list to a list."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch_size: int = 32,
        max_wait_s: float = 0.0,
        alone: Callable[[], bool] | None = None,
        gather_s: float = 0.0,
    ) -> None:
        """``alone``: True when the request being batched is the only one in flight; a batch
        of one then runs inline on the event loop (None: always on the thread).
        ``max_wait_s``: always wait this long for more requests before a batch (0: never).
        ``gather_s``: wait at most this long for as many requests as the largest of the last
        8 batches (0: never)."""
        self.fn = fn
        self.alone = alone
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.gather_s = gather_s
        self._recent: deque[int] = deque([1], maxlen=8)  # sizes of the last batches
        self._gathering: tuple[int, asyncio.Event] | None = None  # (size awaited, its event)
        self.batch_sizes: Counter[int] = Counter()  # how often each batch size ran
        self.inline = 0  # batches that ran on the event loop
        self.gathered = 0  # batches that waited for more requests (gather_s)
        self.gather_timeouts = 0  # of those, the ones that ran short after gather_s
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._gathering is not None and len(self._queue) >= self._gathering[0]:
            self._gathering[1].set()
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self.max_wait_s > 0 and len(self._queue) < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            want = min(self.max_batch_size, max(self._recent))
            if self.gather_s > 0 and len(self._queue) < want and not await self._gather(want):
                self._recent.clear()  # fewer came than expected: expect what did come
            batch = self._queue[: self.max_batch_size]
            del self._queue[: len(batch)]
            self._recent.append(len(batch))
            self.batch_sizes[len(batch)] += 1
            items = [item for item, _ in batch]
            try:
                if len(batch) == 1 and self.alone is not None and self.alone():
                    self.inline += 1
                    results = self.fn(items)
                else:
                    results = await loop.run_in_executor(self._executor, self.fn, items)
            except Exception as exc:  # every waiter of the failed batch gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():  # a waiter whose client went away was cancelled
                    fut.set_result(result)

    async def _gather(self, want: int) -> bool:
        """Wait until ``want`` requests are queued (True), or ``gather_s`` has passed."""
        arrived = asyncio.Event()
        self._gathering = (want, arrived)
        self.gathered += 1
        try:
            await asyncio.wait_for(arrived.wait(), self.gather_s)
            return True
        except TimeoutError:
            self.gather_timeouts += 1
            return False
        finally:
            self._gathering = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
