"""The Celery executor's bookkeeping, without torch: submit, advance, cancel, reconcile.

The gateway, the CLI and every worker's recovery loop call these; only the step runner of the
workers (:mod:`advrec.pipeline.celery_executor`) imports the step functions (and torch), so the
gateway stays a small process.

Lifecycle of a run (the record on disk, :class:`RunRecord`, is the job database):

``submit`` creates the record with a *setup* plan, the ``dataset`` step alone (it loads or
generates the catalog, whose size decides the number of attack shards), and calls ``advance``.
``advance``, under the record lock, marks every pending step whose dependencies are finished as
``cached`` (its artifact is stored) or ``ready``, then :func:`dispatch` sends ready steps as the one
``advrec.run_step`` task to their queues (state ``queued``), fairly: a queue is given no more
messages than its live consumers can start (:mod:`advrec.pipeline.workers`), and each free slot
goes to the key with the fewest steps queued or running on that queue (then the oldest job), so a
key's long job never holds another key's next step behind its backlog. When the setup plan is
finished, ``advance`` expands it into the whole plan
(:func:`advrec.pipeline.dag.plan`) and goes on. Each ``run_step`` (a worker) claims its step,
computes it, marks it ``done`` and calls ``advance`` again. When every step is finished the report
is published and the run is ``done``. The dataset step is an ordinary step: any worker serving its
queue takes it, with the same retry limit, heartbeat and cancellation as every other step.

Redis may lose every message (it may run without persistence), workers may die with SIGKILL, and a
foreign worker (another stack started with the same namespace) may take a message and drop it:
``reconcile`` re-sends queued steps whose message went to a Redis instance that no longer exists
(Redis's ``run_id`` changed) or is in none of the stack's queues any more while no worker claimed
it, and running steps whose heartbeat went stale, then re-advances and dispatches.
Re-running a step is safe: steps skip artifacts that are already stored.
"""

from __future__ import annotations

import fcntl
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from advrec.pipeline import owners
from advrec.pipeline.dag import dataset_step, plan
from advrec.pipeline.queue import QUEUES, RUN_STEP, STALE_AFTER_S, celery_for, key_prefix
from advrec.pipeline.record import TERMINAL, RunRecord, active_runs, publish_report
from advrec.pipeline.spec import EvaluationSpec
from advrec_common.errors import AdvrecError
from advrec_common.settings import Settings, get_settings
from advrec_common.store import ArtifactStore

log = logging.getLogger(__name__)

FINISHED = ("done", "cached")
CANCEL_MARKER = "cancel"  # <runs>/<id>/cancel: what a running step's watcher looks for (a stat, no parse)
LOST_AFTER_S = 30.0  # a queued step whose message is in no queue and unclaimed this long was dropped


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def producer(settings: Settings) -> Celery:
    """The Celery app that sends this stack's messages (its broker and namespace)."""
    return celery_for(settings)


def broker_id(settings: Settings | None = None) -> str:
    """Redis's ``run_id``: it changes whenever Redis restarts (and forgets unpersisted messages)."""
    import redis

    client = redis.Redis.from_url(_settings(settings).redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def send_step(app: Celery, run_id: str, step_name: str, queue: str) -> str:
    """Enqueue the one step task for ``step_name`` on its step's ``queue``; returns the task id."""
    task_id = uuid.uuid4().hex
    app.send_task(RUN_STEP, args=[run_id, step_name], task_id=task_id, queue=queue)
    return task_id


def _pending(row: dict[str, Any]) -> dict[str, Any]:
    return {"state": "pending", "key": row["key"], "kind": row["kind"], "attempts": 0, "error": None, "seconds": None}


def _setup(d: dict[str, Any]) -> None:
    """Give an evaluation record its setup plan: the dataset step alone."""
    row = dataset_step(EvaluationSpec.model_validate(d["spec"])).to_json()
    d.update(plan=[row], setup=True)
    d["steps"].setdefault(row["name"], _pending(row))


def _expand(d: dict[str, Any], store: ArtifactStore, settings: Settings) -> None:
    """Replace a finished setup plan by the whole plan (the catalog size is known now)."""
    spec = EvaluationSpec.model_validate(d["spec"])
    ds_key = d["plan"][0]["key"]
    n_items = int(store.meta(ds_key)["result"]["n_items"])
    full = plan(spec, n_items)
    if full["dataset"].key != ds_key:
        raise AdvrecError("the catalog's files changed while the job was being planned; submit it again")
    owner = d.get("owner")
    limit = settings.quotas(owner).plan_steps
    if len(full) > limit:
        raise AdvrecError(f"the plan has {len(full)} steps, above the limit of {limit} "
                          f"({settings.quota_source(owner, 'plan_steps')}); use fewer extractors, attacks, budgets "
                          f"or recommenders, or a larger shard_size")
    d["plan"] = full.to_json()
    units = _work_units(spec, full, store)
    for row in d["plan"]:
        d["steps"].setdefault(row["name"], _pending(row))
        if row["name"] in units:
            d["steps"][row["name"]]["units"] = units[row["name"]]
    d.update(setup=False, n_items=n_items)


def _work_units(spec: EvaluationSpec, full: Any, store: ArtifactStore) -> dict[str, float]:
    """Each step's estimated work (:mod:`advrec.pipeline.work`), for the job's progress in work units
    (empty when it cannot be estimated: progress then counts steps; an estimate never fails a job)."""
    try:
        from advrec.pipeline.work import estimate, work_facts

        facts = work_facts(spec, full, store)
        return {s.name: round(float(estimate(s, facts).units), 1) for s in full}
    except Exception:  # noqa: BLE001 -- progress is a convenience, the job goes on without it
        log.warning("no work estimates for the job's progress", exc_info=True)
        return {}


def submit(spec: EvaluationSpec, settings: Settings | None = None, owner: str | None = None,
           warnings: list[dict[str, str]] | None = None, run_id: str | None = None,
           work: dict[str, Any] | None = None) -> str:
    """Record a new run with its setup plan and enqueue what is ready; returns the run id.

    ``warnings``: what admission noticed that does not stop the run (``{"loc", "msg"}`` rows), kept
    in the record for the job's status; ``run_id``: the id to give it (the gateway picks it first, for
    idempotent submits); ``work``: admission's estimate of the job's work.

    The record is the acceptance: if the broker is unreachable the run stays ``queued`` and the
    recovery loop enqueues it when Redis is back.
    """
    s = _settings(settings)
    extra = {"work_estimate": work} if work else {}
    record = RunRecord.create(s.runs_dir, spec.model_dump(mode="json"), run_id=run_id, executor="celery", owner=owner,
                              warnings=list(warnings or []), **extra)
    record.update(_setup)
    try:
        advance(record.run_id, s)
    except Exception as exc:  # broker down: reconcile() will enqueue it
        log.warning("run %s recorded but not enqueued (%s); the recovery loop will", record.run_id, exc)
    return record.run_id


def advance(run_id: str, settings: Settings | None = None) -> str:
    """Enqueue every step that became ready; expand a finished setup; publish the report at the end.

    Runs under the record lock, so concurrent calls (one per finishing step) never enqueue a
    step twice. Returns the run's state.
    """
    s = _settings(settings)
    record = RunRecord.open(s.runs_dir, run_id)
    store = ArtifactStore(s.store_dir)

    def all_finished(d: dict[str, Any]) -> bool:
        return all(d["steps"][r["name"]]["state"] in FINISHED for r in d["plan"])

    def expand(d: dict[str, Any]) -> bool:
        try:
            _expand(d, store, s)
        except Exception as exc:  # a plan that cannot be made fails the job, saying why
            why = str(exc) if isinstance(exc, AdvrecError) else f"{type(exc).__name__}: {exc}"
            d.update(state="failed", error=f"planning failed: {why}", finished=time.time())
            return False
        return True

    def own_finished(d: dict[str, Any]) -> None:  # the job's key owns what it made or reused
        for row in d["plan"]:
            st = d["steps"][row["name"]]
            if st["state"] in FINISHED and not st.get("owned") and d.get("owner"):
                owners.add(s.home, row["key"], d["owner"])
                st["owned"] = True

    def enqueue_ready(d: dict[str, Any]) -> None:
        steps = d["steps"]
        for row in d["plan"]:  # topological order: a step cached here unblocks the next ones
            st = steps[row["name"]]
            if st["state"] != "pending" or not all(steps[dep]["state"] in FINISHED for dep in row["deps"]):
                continue
            if store.has(row["key"]):
                st["state"] = "cached"
                continue
            st.update(state="ready", ready_at=time.time())  # dispatch() sends it when its queue has room

    def fn(d: dict[str, Any]) -> None:
        if d["state"] in TERMINAL or d.get("cancel_requested") or d["plan"] is None:
            return
        for _ in range(2):  # a setup whose dataset is already stored expands in this same update
            if d.get("setup") and all_finished(d) and not expand(d):
                return
            enqueue_ready(d)
            if not (d.get("setup") and all_finished(d)):
                break
        own_finished(d)
        if not d.get("setup") and all_finished(d):
            # evaluations end with a report; a single-step job (e.g. a recommender training) has none
            report_key = next((r["key"] for r in d["plan"] if r["kind"] == "report"), None)
            if report_key is not None:
                publish_report(store, report_key, record.dir)
            d.update(report_key=report_key, state="done", finished=time.time())
        elif d["state"] == "queued":
            d["state"] = "running"

    state = record.update(fn)["state"]
    if state not in TERMINAL:
        dispatch(s)
    return state


@contextmanager
def _dispatch_lock(settings: Settings) -> Iterator[None]:
    """One dispatcher at a time for a home (every gateway and worker may call it; the home may be shared
    by several hosts: a file lock on it)."""
    from advrec.pipeline.job_index import index_dir

    index_dir(settings.runs_dir).mkdir(parents=True, exist_ok=True)
    with open(index_dir(settings.runs_dir) / ".dispatch.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _consumer_slots(settings: Settings) -> dict[str, int]:
    from advrec.pipeline.workers import live_workers, slots

    return slots(live_workers(settings))


def dispatch(settings: Settings | None = None) -> int:
    """Send ready steps of every unfinished job to their queues, fairly across keys; returns how many.

    A queue gets no more messages waiting (``queued``) or running than its live consumers' summed
    concurrency (at least one, so a step waits in Redis for a worker that is starting); each free slot
    goes to the key with the fewest steps queued or running on that queue, then to the key served least
    recently there (round robin), then to its oldest job, in plan order. A message in Redis is therefore never behind another key's backlog: one key's 500 attack
    shards leave the next key's shard the first free attack worker.
    """
    s = _settings(settings)
    with _dispatch_lock(s):
        runs: list[dict[str, Any]] = []
        for run_id in active_runs(s.runs_dir):
            try:
                d = RunRecord.open(s.runs_dir, run_id).read()
            except (AdvrecError, ValueError, OSError):
                continue
            if d.get("executor") == "celery" and d["state"] not in TERMINAL and not d.get("cancel_requested") \
                    and d.get("plan"):
                runs.append(d)
        load: dict[str, int] = dict.fromkeys(QUEUES, 0)
        busy: dict[tuple[str, str], int] = {}
        served: dict[tuple[str, str], float] = {}  # (queue, owner) -> when it was last given a slot
        ready: dict[str, list[tuple[float, int, str, str, str]]] = {}
        for d in runs:
            owner = d.get("owner") or "_"
            for pos, row in enumerate(d["plan"]):
                st, q = d["steps"].get(row["name"], {}), row["queue"]
                if st.get("queued_at"):
                    served[q, owner] = max(served.get((q, owner), 0.0), float(st["queued_at"]))
                if st.get("state") in ("queued", "running"):
                    load[q] = load.get(q, 0) + 1
                    busy[q, owner] = busy.get((q, owner), 0) + 1
                elif st.get("state") == "ready":
                    ready.setdefault(q, []).append((float(d["created"]), pos, d["run_id"], row["name"], owner))
        if not ready:
            return 0
        capacity = _consumer_slots(s)
        picks: dict[str, list[tuple[str, str]]] = {}
        for q, items in ready.items():
            free = max(1, capacity.get(q, 0)) - load.get(q, 0)
            items.sort()
            while free > 0 and items:  # fewest in flight, then least recently served, then the oldest job
                owner = min({it[4] for it in items}, key=lambda o: (busy.get((q, o), 0), served.get((q, o), 0.0),
                                                                      min(it[0] for it in items if it[4] == o)))
                it = next(it for it in items if it[4] == owner)
                items.remove(it)
                picks.setdefault(it[2], []).append((it[3], q))
                busy[q, owner] = busy.get((q, owner), 0) + 1
                served[q, owner] = time.time()
                free -= 1
        if not picks:
            return 0
        app, bid, sent = producer(s), broker_id(s), [0]
        for run_id, steps in picks.items():
            def fn(d: dict[str, Any], steps: list[tuple[str, str]] = steps, run_id: str = run_id) -> None:
                if d["state"] in TERMINAL or d.get("cancel_requested"):
                    return
                for name, q in steps:
                    st = d["steps"][name]
                    if st["state"] == "ready":
                        st.update(state="queued", task_id=send_step(app, run_id, name, q), broker=bid,
                                  queued_at=time.time())
                        sent[0] += 1

            RunRecord.open(s.runs_dir, run_id).update(fn)
        return sent[0]


def cancel(run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Cancel a run: flag it, mark it cancelled, revoke its queued messages; returns the record.

    Nothing new is enqueued; workers check the flag before every step, and a running step polls
    it between batches through its progress callback and stops within seconds.
    """
    s = _settings(settings)
    record = RunRecord.open(s.runs_dir, run_id)
    revoke: list[str] = []

    def fn(d: dict[str, Any]) -> None:
        if d["state"] in TERMINAL:
            return
        d.update(cancel_requested=True, state="cancelled", finished=time.time())
        for st in d["steps"].values():
            if st["state"] in ("queued", "ready", "pending"):
                if st.get("task_id"):
                    revoke.append(st["task_id"])
                st["state"] = "cancelled"

    (record.dir / CANCEL_MARKER).touch()  # before the record says so: a running step's watcher stats it
    data = record.update(fn)
    if revoke:
        try:
            producer(s).control.revoke(revoke)
        except Exception as exc:  # revocation is an optimisation: workers check the flag anyway
            log.warning("could not revoke %d task(s) of %s: %s", len(revoke), run_id, exc)
    return data


def reconcile(settings: Settings | None = None) -> dict[str, int]:
    """Re-drive every non-terminal Celery run after lost messages or dead workers.

    Re-sends queued steps whose message went to a Redis that restarted, and running steps whose
    heartbeat is older than STALE_AFTER_S; gives a record without a plan (written by an older
    version, or a gateway that died between two writes) its setup plan. Then advances each run.
    Idempotent: safe on every worker/gateway start and periodically.
    """
    s = _settings(settings)
    app = producer(s)
    bid = broker_id(s)
    waiting = messages_in_broker(s)
    summary = {"runs": 0, "requeued": 0}
    for run_id in active_runs(s.runs_dir):
        try:
            record = RunRecord.open(s.runs_dir, run_id)
            row = record.read()
        except (AdvrecError, ValueError, OSError):
            continue
        if row.get("executor") != "celery" or row["state"] in TERMINAL:
            continue
        summary["runs"] += 1

        def fn(d: dict[str, Any], run_id: str = row["run_id"]) -> None:
            now = time.time()
            if d["state"] in TERMINAL or d.get("cancel_requested"):
                return
            if d["plan"] is None:
                try:
                    _setup(d)
                except Exception as exc:
                    d.update(state="failed", error=f"planning failed: {type(exc).__name__}: {exc}")
                return
            queues = {r["name"]: r["queue"] for r in d["plan"]}
            for name, st in d["steps"].items():
                dropped = st["state"] == "queued" and st.get("task_id") not in waiting and \
                    now - float(st.get("queued_at") or 0) > LOST_AFTER_S
                lost = (st["state"] == "queued" and st.get("broker") != bid) or dropped or (
                    st["state"] == "running" and now - st.get("heartbeat", 0) > STALE_AFTER_S)
                if lost:
                    st.update(state="queued", task_id=send_step(app, run_id, name, queues[name]),
                              broker=bid, queued_at=now)
                    summary["requeued"] += 1

        data = record.update(fn)
        if data["plan"] is not None and data["state"] not in TERMINAL:
            advance(run_id, s)
    dispatch(s)
    return summary


def messages_in_broker(settings: Settings) -> set[str]:
    """Task ids of every message of this stack that Redis holds: waiting in a queue, or delivered and not
    yet acknowledged (a worker has it). A queued step whose id is in neither was lost."""
    import json

    import redis

    prefix = key_prefix(settings.namespace)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    ids: set[str] = set()

    def task_id(raw: bytes | str) -> str | None:
        try:
            msg = json.loads(raw)
            msg = msg[0] if isinstance(msg, list) else msg  # unacked entries: [message, exchange, routing key]
            return (msg.get("headers") or {}).get("id") or (msg.get("properties") or {}).get("correlation_id")
        except (ValueError, AttributeError, IndexError, TypeError):
            return None

    try:
        for q in QUEUES:
            for key in client.scan_iter(match=f"{prefix}{q}*", count=100):  # priority lists carry suffixes
                if client.type(key) == b"list":
                    ids.update(i for i in map(task_id, client.lrange(key, 0, -1)) if i)
        ids.update(i for i in map(task_id, client.hvals(f"{prefix}unacked")) if i)
    finally:
        client.close()
    return ids


def active_jobs(settings: Settings, owner: str | None) -> int:
    """Unfinished Celery jobs of ``owner`` (the concurrent-jobs quota counts these), from the job index."""
    n = 0
    for run_id in active_runs(settings.runs_dir, owner or "_"):
        try:
            d = RunRecord.open(settings.runs_dir, run_id).read()
        except (AdvrecError, ValueError, OSError):
            continue
        n += d.get("executor") == "celery" and d["state"] not in TERMINAL and d.get("owner") == owner
    return n
