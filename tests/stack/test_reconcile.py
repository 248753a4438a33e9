"""The executor's bookkeeping against the real Redis, without workers: reconcile re-sends exactly the
lost messages, the poison-task guard, cancellation, and duplicate deliveries."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis

from advrec.pipeline import celery_executor as ce
from advrec.pipeline import jobs
from advrec.pipeline.dag import Plan
from advrec.pipeline.queue import MAX_ATTEMPTS, STALE_AFTER_S, key_prefix
from advrec.pipeline.record import RunRecord
from advrec.pipeline.workers import register
from advrec_common.settings import Settings
from tests.redis_server import redis_url as private_redis_url

pytestmark = pytest.mark.stack

URL = private_redis_url(7)  # its own DB: nothing consumes these messages


@pytest.fixture
def env(tmp_path, redis_url):
    client = redis.Redis.from_url(URL)
    client.flushdb()
    settings = Settings(home=tmp_path / "home", redis_url=URL, device="cpu")
    plan = Plan()
    plan.add("dataset", "dataset", {"n": 1})
    plan.add("extractor/a", "extractor", {"e": 1})
    plan.add("features/a", "features", {"f": 1}, {"dataset": "dataset", "extractor": "extractor/a"})
    plan.add("train/a/vbpr", "train", {"t": 1}, {"dataset": "dataset", "features": "features/a"})
    rec = RunRecord.create(settings.runs_dir, {"name": "r"}, executor="celery")
    rec.set_plan(plan.to_json())
    rec.set_state("running")
    yield settings, rec, client
    client.flushdb()


def _queued(client: redis.Redis, queue: str, settings: Settings) -> list[list]:
    """[run_id, step] of every message waiting in ``queue`` (of the stack of ``settings``)."""
    out = []
    for raw in client.lrange(key_prefix(settings.namespace) + queue, 0, -1):  # kombu's Redis transport: a JSON envelope, base64 body
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append(args)
    return out


def test_reconcile_resends_dead_and_lost_steps_only(env):
    settings, rec, client = env
    bid = ce.broker_id(settings)
    now = time.time()
    waiting = jobs.send_step(jobs.producer(settings), rec.run_id, "train/a/vbpr", "recommend")

    def states(d):
        s = d["steps"]
        s["dataset"].update(state="done")
        s["extractor/a"].update(state="running", heartbeat=now - STALE_AFTER_S - 5, task_id="dead")  # dead worker
        s["features/a"].update(state="queued", broker="an-old-redis")  # Redis restarted since
        # still waiting in this Redis (for an hour: workers are busy): leave it
        s["train/a/vbpr"].update(state="queued", broker=bid, task_id=waiting, queued_at=now - 3600)

    rec.update(states)
    summary = ce.reconcile(settings)
    assert summary == {"runs": 1, "requeued": 2}
    assert sorted(map(tuple, _queued(client, "extract", settings))) == [(rec.run_id, "extractor/a"), (rec.run_id, "features/a")]
    assert _queued(client, "recommend", settings) == [[rec.run_id, "train/a/vbpr"]]  # not sent twice
    d = rec.read()
    assert d["steps"]["extractor/a"]["state"] == "queued" and d["steps"]["features/a"]["broker"] == bid
    # idempotent: nothing is lost any more, so a second pass sends nothing
    assert ce.reconcile(settings)["requeued"] == 0
    assert len(_queued(client, "extract", settings)) == 2


def test_fresh_heartbeat_is_left_alone_and_duplicates_are_skipped(env):
    settings, rec, client = env
    rec.update(lambda d: d["steps"]["extractor/a"].update(state="running", heartbeat=time.time(), task_id="t1"))
    assert ce.reconcile(settings)["requeued"] == 0
    # another delivery of a step that a live worker is running is skipped, and counts no attempt
    assert ce.run_step(rec.run_id, "extractor/a", task_id="t2", settings=settings) == "skipped"
    assert rec.read()["steps"]["extractor/a"]["attempts"] == 0
    rec.update(lambda d: d["steps"]["dataset"].update(state="done"))
    assert ce.run_step(rec.run_id, "dataset", task_id="t3", settings=settings) == "skipped"


def test_poison_step_fails_the_job_after_max_deliveries(env):
    settings, rec, _ = env
    rec.update(lambda d: d["steps"]["extractor/a"].update(state="running", attempts=MAX_ATTEMPTS, task_id="t",
                                                          heartbeat=0))
    assert ce.run_step(rec.run_id, "extractor/a", task_id="t", settings=settings) == "failed"
    d = rec.read()
    assert d["state"] == "failed" and "gave up" in d["error"] and d["steps"]["extractor/a"]["state"] == "failed"


def test_a_message_a_foreign_worker_took_and_dropped_is_sent_again(env):
    """Another stack's worker (the same namespace) takes a message and drops it ("no such run here"): the
    step stays queued with its message in no queue and unclaimed; reconcile sends it again."""
    from advrec.pipeline.jobs import LOST_AFTER_S

    settings, rec, client = env
    register(settings, "extract@here", ["extract"])
    ce.advance(rec.run_id, settings)
    [(run_id, step)] = _queued(client, "extract", settings)
    assert client.rpop(key_prefix(settings.namespace) + "extract")  # the foreign worker took it; it is gone
    assert ce.reconcile(settings)["requeued"] == 0  # just sent: a worker may be about to claim it
    rec.update(lambda d: d["steps"][step].update(queued_at=time.time() - LOST_AFTER_S - 1))
    assert ce.reconcile(settings)["requeued"] == 1
    assert _queued(client, "extract", settings) == [[run_id, step]]
    assert ce.reconcile(settings)["requeued"] == 0  # it is in the queue again: left alone


def test_dispatch_interleaves_keys_on_a_busy_queue(env):
    """One attack worker; key A's job has three ready attack steps, key B's job (newer) one: the queue
    gets one message at a time, and B's step is the second to go, not the fourth."""
    settings, _, client = env
    register(settings, "attack@here", ["attack"])
    plan = Plan()
    for i in range(3):
        plan.add(f"attack/{i}", "attack_shard", {"i": i})
    a = RunRecord.create(settings.runs_dir, {"name": "a"}, executor="celery", owner="a" * 16)
    a.set_plan(plan.to_json())
    b_plan = Plan()
    b_plan.add("attack/0", "attack_shard", {"b": 1})
    b = RunRecord.create(settings.runs_dir, {"name": "b"}, executor="celery", owner="b" * 16)
    b.set_plan(b_plan.to_json())
    ce.advance(a.run_id, settings)
    ce.advance(b.run_id, settings)
    order = [tuple(m) for m in _queued(client, "attack", settings)]
    assert order == [(a.run_id, "attack/0")]  # one slot: one message waits, the rest are ready
    for _ in range(4):  # a worker takes the message, runs the step, and the next goes out
        run_id, step = order[-1]
        client.rpop(key_prefix(settings.namespace) + "attack")
        RunRecord.open(settings.runs_dir, run_id).update(lambda d, step=step: d["steps"][step].update(state="done"))
        jobs.dispatch(settings)
        nxt = [tuple(m) for m in _queued(client, "attack", settings)]
        if not nxt:
            break
        order += nxt
    assert order == [(a.run_id, "attack/0"), (b.run_id, "attack/0"), (a.run_id, "attack/1"), (a.run_id, "attack/2")]


def test_advance_queues_ready_steps_once_and_cancel_stops_everything(env):
    settings, rec, client = env
    register(settings, "extract@here", ["extract"], concurrency=2)
    ce.advance(rec.run_id, settings)
    ce.advance(rec.run_id, settings)  # concurrent/duplicate advance: no second message
    assert sorted(s for _, s in _queued(client, "extract", settings)) == ["dataset", "extractor/a"]
    d = ce.cancel(rec.run_id, settings)
    assert d["state"] == "cancelled" and d["cancel_requested"]
    assert {s["state"] for s in d["steps"].values()} == {"cancelled"}
    assert ce.run_step(rec.run_id, "dataset", task_id="x", settings=settings) == "skipped"
    assert ce.advance(rec.run_id, settings) == "cancelled"
    assert ce.reconcile(settings)["runs"] == 0
    assert len(_queued(client, "extract", settings)) == 2  # nothing new was sent


def test_unknown_run_is_skipped(env):
    settings, _, _ = env
    assert ce.run_step("20990101-000000-gone-000000", "dataset", settings=settings) == "skipped"


def test_a_step_failing_after_cancel_leaves_the_job_cancelled(env, monkeypatch):
    settings, rec, _ = env
    rec.update(lambda d: d["steps"]["dataset"].update(state="done"))

    def boom(*_a, **_k):
        ce.cancel(rec.run_id, settings)  # the user cancels while the step runs
        raise RuntimeError("step blew up")

    monkeypatch.setattr(ce, "_execute_step", boom)
    assert ce.run_step(rec.run_id, "extractor/a", task_id="t", settings=settings) == "failed"
    d = rec.read()
    assert d["state"] == "cancelled" and d["steps"]["extractor/a"]["state"] == "failed"
    assert "blew up" in d["steps"]["extractor/a"]["error"]
