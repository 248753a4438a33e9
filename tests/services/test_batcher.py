"""The asyncio micro-batcher: concurrent submissions share batches, the queue is bounded, errors reach callers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from advrec_common.errors import Overloaded
from services.extractor.batcher import MicroBatcher


class Recorder:
    """run_batch that records each call's group and size (and squares the items)."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[tuple[object, int]] = []
        self.gate = gate

    def __call__(self, group, items):
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append((group, len(items)))
        return [x * x for x in items]


def test_concurrent_requests_share_one_batch():
    rec = Recorder()

    async def main():
        b = MicroBatcher(rec, max_batch=16, max_wait_ms=50)
        out = await asyncio.gather(*(b.submit("g", i) for i in range(10)))
        await b.close()
        return out, b.stats

    out, stats = asyncio.run(main())
    assert out == [i * i for i in range(10)]
    assert rec.calls == [("g", 10)] and stats.batches == 1 and stats.items == 10


def test_max_batch_and_groups_split_batches():
    rec = Recorder()

    async def main():
        b = MicroBatcher(rec, max_batch=4, max_wait_ms=50)
        pairs = [("a" if i % 2 else "b", i) for i in range(8)]
        out = await b.submit_many(pairs)
        await b.close()
        return out

    out = asyncio.run(main())
    assert out == [i * i for i in range(8)]
    assert all(n <= 4 for _, n in rec.calls) and sum(n for _, n in rec.calls) == 8
    assert {g for g, _ in rec.calls} == {"a", "b"}


def test_full_queue_raises_overloaded_and_queues_nothing():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = MicroBatcher(rec, max_batch=1, max_wait_ms=0, max_queue=3)
        first = asyncio.ensure_future(b.submit("g", 1))  # taken by the worker, blocked on the gate
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit("g", i)) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await b.submit_many([("g", 7), ("g", 8)])
        pending = b.pending
        gate.set()
        results = await asyncio.gather(first, *waiting)
        await b.close()
        return pending, results

    pending, results = asyncio.run(main())
    assert pending == 3 and results == [1, 0, 1, 4]


def test_batch_error_reaches_every_caller_and_worker_survives():
    def run(group, items):
        if 0 in items:
            raise ValueError("bad item")
        return items

    async def main():
        b = MicroBatcher(run, max_batch=8, max_wait_ms=20)
        res = await asyncio.gather(b.submit("g", 0), b.submit("g", 1), return_exceptions=True)
        after = await b.submit("g", 5)
        await b.close()
        return res, after

    res, after = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in res) and after == 5


def test_bad_knobs_rejected():
    from advrec_common.errors import InvalidInput

    with pytest.raises(InvalidInput):
        MicroBatcher(lambda g, x: x, max_batch=0)
