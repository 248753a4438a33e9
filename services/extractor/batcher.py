"""An asyncio micro-batcher: concurrent requests share one model forward.

Callers ``await batcher.submit(group, item)``; a single worker task takes the first queued
item, then keeps collecting for at most ``max_wait_ms`` or until ``max_batch`` items are waiting,
splits what it collected by ``group`` (items of one group can be stacked: same model, same image
size) and runs ``run_batch(group, items)`` once per group in a worker thread, so the event loop
keeps accepting requests while the GPU (or CPU) works. The queue is bounded: when ``max_queue``
items are already waiting, :meth:`submit` raises :class:`~advrec_common.errors.Overloaded` (503)
instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from advrec_common.errors import InvalidInput, Overloaded

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatcherStats:
    """Counters since start: batches run (one forward each), items served, largest batch."""

    batches: int = 0
    items: int = 0
    max_batch_seen: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def record(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.max_batch_seen = max(self.max_batch_seen, n)
        self.batch_sizes = (self.batch_sizes + [n])[-100:]


@dataclass
class _Job(Generic[T, R]):
    group: Hashable
    item: T
    future: asyncio.Future


class MicroBatcher(Generic[T, R]):
    """Collects items for up to ``max_wait_ms`` (or ``max_batch`` items) and runs them together.

    ``run_batch(group, items) -> results`` must return one result per item, in order; an
    exception fails every item of that batch (each caller gets it re-raised).
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, Sequence[T]], Sequence[R]],
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InvalidInput("need max_batch >= 1, max_queue >= 1 and max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Job[T, R]] | None = None
        self._worker: asyncio.Task | None = None
        self._owner: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def _ensure_worker(self) -> asyncio.Queue[_Job[T, R]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._owner is not loop:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._worker = loop.create_task(self._loop(self._queue))
            self._owner = loop
        return self._queue

    async def submit_many(self, requests: Sequence[tuple[Hashable, T]]) -> list[R]:
        """Results of ``(group, item)`` pairs, in order; queued all at once (or none: 503 when full)."""
        queue = self._ensure_worker()
        if queue.qsize() + len(requests) > self.max_queue:
            raise Overloaded(
                f"extraction queue is full ({queue.qsize()} waiting, limit {self.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(group, item, loop.create_future()) for group, item in requests]
        for job in jobs:
            queue.put_nowait(job)
        return list(await asyncio.gather(*(j.future for j in jobs)))

    async def submit(self, group: Hashable, item: T) -> R:
        return (await self.submit_many([(group, item)]))[0]

    async def _collect(self, queue: asyncio.Queue[_Job[T, R]]) -> list[_Job[T, R]]:
        jobs = [await queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(queue.get(), timeout=left))
            except TimeoutError:
                break
        return jobs

    async def _loop(self, queue: asyncio.Queue[_Job[T, R]]) -> None:
        while True:
            jobs = await self._collect(queue)
            groups: dict[Hashable, list[_Job[T, R]]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group, members in groups.items():
                await self._run(group, members)

    async def _run(self, group: Hashable, jobs: list[_Job[T, R]]) -> None:
        live = [j for j in jobs if not j.future.done()]  # a caller may have gone away
        if not live:
            return
        try:
            results = await asyncio.to_thread(self.run_batch, group, [j.item for j in live])
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
        except Exception as exc:  # every caller of the batch gets the error
            for j in live:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        self.stats.record(len(live))
        for j, res in zip(live, results, strict=True):
            if not j.future.done():
                j.future.set_result(res)

    async def close(self) -> None:
        """Stop the worker (pending callers get CancelledError)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                job.future.cancel()
        self._worker = self._queue = None

    def describe(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000, "max_queue": self.max_queue,
                "pending": self.pending, "batches": self.stats.batches, "items": self.stats.items,
                "max_batch_seen": self.stats.max_batch_seen}
