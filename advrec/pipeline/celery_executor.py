"""The Celery executor: the same DAG and step functions as the in-process executor, run by workers.

Lifecycle of a run (the record on disk, :class:`RunRecord`, is the job database):

``submit`` creates the record (``executor="celery"``) and enqueues ``orchestrate.start``;
``start`` plans the run (the dataset step runs there) and calls ``advance``; ``advance``, under
the record lock, marks every pending step whose dependencies are finished as ``cached`` (its
artifact is stored) or ``queued`` (sent as the one ``advrec.run_step`` task to the step's queue);
each ``run_step`` claims its step (``running``, with an attempt count and a heartbeat), computes it
with :func:`execute_step`, marks it ``done`` and calls ``advance`` again. When every step is
finished the report is published and the run is ``done``.

Redis may lose every message (it runs without persistence) and workers may die with SIGKILL:
``reconcile`` re-sends queued steps whose message went to a Redis instance that no longer exists
(Redis's ``run_id`` changed) and running steps whose heartbeat went stale, then re-advances.
Re-running a step is safe: :func:`execute_step` skips artifacts that are already stored.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from advrec.pipeline.dag import Plan
from advrec.pipeline.executor import CancelledRun, execute_step, plan_run, publish_report
from advrec.pipeline.queue import HEARTBEAT_S, MAX_ATTEMPTS, RUN_STEP, STALE_AFTER_S, app, celery_for
from advrec.pipeline.record import TERMINAL, RunRecord, list_runs
from advrec.pipeline.spec import EvaluationSpec, parse_spec
from advrec_common.errors import NotFound
from advrec_common.settings import Settings, get_settings
from advrec_common.store import ArtifactStore

log = logging.getLogger(__name__)

FINISHED = ("done", "cached")


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def _producer(settings: Settings) -> Celery:
    return celery_for(settings.redis_url)


def broker_id(settings: Settings | None = None) -> str:
    """Redis's ``run_id``: it changes whenever Redis restarts (and forgets unpersisted messages)."""
    import redis

    client = redis.Redis.from_url(_settings(settings).redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def _send(producer: Celery, task: str, args: list[Any], queue: str | None = None) -> str:
    task_id = uuid.uuid4().hex
    producer.send_task(task, args=args, task_id=task_id, **({"queue": queue} if queue else {}))
    return task_id


def send_step(producer: Celery, run_id: str, step_name: str, queue: str) -> str:
    """Enqueue the one step task for ``step_name`` on its step's ``queue``; returns the task id."""
    return _send(producer, RUN_STEP, [run_id, step_name], queue=queue)


@contextmanager
def _heartbeat(record: RunRecord, touch: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Apply ``touch`` to the record every HEARTBEAT_S seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                record.update(touch)
            except Exception:  # a heartbeat must never kill the step
                log.exception("heartbeat of %s failed", record.run_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{record.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=HEARTBEAT_S + 1)


def _cancel_checker(record: RunRecord, every_s: float = 1.0) -> Callable[[dict[str, Any]], None]:
    """A progress callback that raises :class:`CancelledRun` once the run is cancelled."""
    last = [0.0]

    def check(_info: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if record.read().get("cancel_requested"):
                raise CancelledRun()

    return check


# ----------------------------------------------------------------------------------------------
# the executor's operations


def submit(spec: EvaluationSpec, settings: Settings | None = None) -> str:
    """Record a new run and enqueue its start; returns the run id.

    The record is the acceptance: if the broker is unreachable the run stays ``queued`` and the
    reconciler starts it when Redis is back.
    """
    s = _settings(settings)
    record = RunRecord.create(s.runs_dir, spec.model_dump(mode="json"), executor="celery")
    try:
        bid = broker_id(s)
        task_id = _send(_producer(s), "orchestrate.start", [record.run_id])
        record.update(lambda d: d.update(start_task=task_id, start_broker=bid))
    except Exception as exc:  # broker down: reconcile() will start the run
        log.warning("run %s recorded but not enqueued (%s); the reconciler will start it", record.run_id, exc)
    return record.run_id


def start(run_id: str, settings: Settings | None = None) -> str:
    """Plan the run (materialising the dataset step), store the plan, then advance; returns the state."""
    s = _settings(settings)
    record = RunRecord.open(s.runs_dir, run_id)
    data = record.read()
    if data["state"] in TERMINAL or data.get("cancel_requested"):
        return data["state"]
    if data["plan"] is None:
        record.update(lambda d: d.update(start_heartbeat=time.time()))
        record.set_state("running")
        try:
            with _heartbeat(record, lambda d: d.update(start_heartbeat=time.time())):
                plan = plan_run(parse_spec(data["spec"]), ArtifactStore(s.store_dir), s.device)
        except Exception as exc:
            record.set_state("failed", error=f"planning failed: {type(exc).__name__}: {exc}")
            log.exception("planning run %s failed", run_id)
            return "failed"
        record.set_plan(plan.to_json())
    return advance(run_id, s)


def advance(run_id: str, settings: Settings | None = None) -> str:
    """Enqueue every step that became ready; publish the report when all are finished.

    Runs under the record lock, so concurrent calls (one per finishing step) never enqueue a
    step twice. Returns the run's state.
    """
    s = _settings(settings)
    record = RunRecord.open(s.runs_dir, run_id)
    store = ArtifactStore(s.store_dir)
    producer = _producer(s)
    bid_cache: list[str] = []

    def bid() -> str:
        if not bid_cache:
            bid_cache.append(broker_id(s))
        return bid_cache[0]

    def fn(d: dict[str, Any]) -> None:
        if d["state"] in TERMINAL or d.get("cancel_requested") or d["plan"] is None:
            return
        steps = d["steps"]
        for row in d["plan"]:  # topological order: a step cached here unblocks the next ones
            st = steps[row["name"]]
            if st["state"] != "pending" or not all(steps[dep]["state"] in FINISHED for dep in row["deps"]):
                continue
            if store.has(row["key"]):
                st["state"] = "cached"
                continue
            task_id = send_step(producer, run_id, row["name"], row["queue"])
            st.update(state="queued", task_id=task_id, broker=bid(), queued_at=time.time())
        if all(st["state"] in FINISHED for st in steps.values()):
            # evaluations end with a report; a single-step job (e.g. a recommender training) has none
            report_key = next((r["key"] for r in d["plan"] if r["kind"] == "report"), None)
            if report_key is not None:
                publish_report(store, report_key, record.dir)
            d.update(report_key=report_key, state="done", finished=time.time())
        elif d["state"] == "queued":
            d["state"] = "running"

    return record.update(fn)["state"]


def run_step(run_id: str, step_name: str, task_id: str | None = None, worker: str | None = None,
             settings: Settings | None = None) -> str:
    """Compute one step of a run (the body of the ``advrec.run_step`` task).

    Returns what happened: ``done``/``cached`` (computed/reused), ``skipped`` (run terminal or
    cancelled, step already finished, or another live delivery is running it), ``failed``
    (the step raised, or exceeded MAX_ATTEMPTS deliveries) or ``cancelled``.
    """
    s = _settings(settings)
    try:
        record = RunRecord.open(s.runs_dir, run_id)
    except NotFound:  # a message about a run this home does not hold (deleted, or another stack's)
        log.warning("run %s step %s: no such run here", run_id, step_name)
        return "skipped"
    claim: dict[str, Any] = {}

    def take(d: dict[str, Any]) -> None:
        st = d["steps"].get(step_name)
        now = time.time()
        if d["state"] in TERMINAL or d.get("cancel_requested") or d["plan"] is None or st is None:
            claim["why"] = f"run is {d['state']}"
            return
        if st["state"] in FINISHED:
            claim["why"] = "step already finished"
            return
        if st["state"] == "running" and st.get("task_id") != task_id and now - st.get("heartbeat", 0) < STALE_AFTER_S:
            claim["why"] = "another delivery is running it"
            return
        attempts = int(st.get("attempts", 0)) + 1
        if attempts > MAX_ATTEMPTS:
            msg = f"step {step_name} gave up after {MAX_ATTEMPTS} deliveries (its worker died each time)"
            st.update(state="failed", error=msg)
            d.update(state="failed", error=msg)
            claim["why"] = "poison"
            return
        st.update(state="running", attempts=attempts, task_id=task_id, worker=worker, heartbeat=now, started=now)
        d["state"] = "running"
        claim["plan"] = d["plan"]

    record.update(take)
    if "plan" not in claim:
        log.info("run %s step %s not run: %s", run_id, step_name, claim.get("why"))
        return "failed" if claim.get("why") == "poison" else "skipped"

    plan = Plan.from_json(claim["plan"])
    store = ArtifactStore(s.store_dir)

    def touch(d: dict[str, Any]) -> None:
        d["steps"][step_name]["heartbeat"] = time.time()

    t0 = time.perf_counter()
    try:
        with _heartbeat(record, touch):
            computed = execute_step(plan[step_name], plan, store, s.device, progress=_cancel_checker(record))
    except CancelledRun:
        record.set_step(step_name, state="cancelled")
        return "cancelled"
    except Exception as exc:
        short = f"{type(exc).__name__}: {exc}"
        error = f"{short}\n{traceback.format_exc(limit=5)}"

        def fail(d: dict[str, Any]) -> None:
            d["steps"][step_name].update(state="failed", error=error)
            if d["state"] not in TERMINAL:  # a job cancelled meanwhile stays cancelled
                d.update(state="failed", error=f"step {step_name} failed: {short}")

        record.update(fail)
        log.exception("run %s step %s failed", run_id, step_name)
        return "failed"
    outcome = "done" if computed else "cached"
    record.set_step(step_name, state=outcome, seconds=round(time.perf_counter() - t0, 3), finished=time.time())
    advance(run_id, s)
    return outcome


def cancel(run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Cancel a run: flag it, mark it cancelled, revoke its queued messages; returns the record.

    A step already running finishes its current computation (workers check the flag before every
    step, and long steps poll it through the progress callback); nothing new is enqueued.
    """
    s = _settings(settings)
    record = RunRecord.open(s.runs_dir, run_id)
    revoke: list[str] = []

    def fn(d: dict[str, Any]) -> None:
        if d["state"] in TERMINAL:
            return
        d.update(cancel_requested=True, state="cancelled")
        for st in d["steps"].values():
            if st["state"] in ("queued", "pending"):
                if st.get("task_id"):
                    revoke.append(st["task_id"])
                st["state"] = "cancelled"
        if d.get("start_task") and d["plan"] is None:
            revoke.append(d["start_task"])

    data = record.update(fn)
    if revoke:
        try:
            _producer(s).control.revoke(revoke)
        except Exception as exc:  # revocation is an optimisation: workers check the flag anyway
            log.warning("could not revoke %d task(s) of %s: %s", len(revoke), run_id, exc)
    return data


def reconcile(settings: Settings | None = None) -> dict[str, int]:
    """Re-drive every non-terminal Celery run after lost messages or dead workers.

    Re-sends: the start of an unplanned run whose start message went to a Redis that restarted
    (or whose planner's heartbeat is stale); queued steps whose message went to a Redis that
    restarted; running steps whose heartbeat is older than STALE_AFTER_S. Then advances each
    run. Idempotent: safe on every worker/gateway start and periodically.
    """
    s = _settings(settings)
    producer = _producer(s)
    bid = broker_id(s)
    summary = {"runs": 0, "restarted": 0, "requeued": 0}
    for row in list_runs(s.runs_dir):
        if row.get("executor") != "celery" or row["state"] in TERMINAL:
            continue
        summary["runs"] += 1
        record = RunRecord.open(s.runs_dir, row["run_id"])

        def fn(d: dict[str, Any], run_id: str = row["run_id"]) -> None:
            now = time.time()
            if d["state"] in TERMINAL or d.get("cancel_requested"):
                return
            if d["plan"] is None:
                lost = d.get("start_broker") != bid if d["state"] == "queued" else \
                    now - d.get("start_heartbeat", 0) > STALE_AFTER_S
                if lost:
                    d.update(start_task=_send(producer, "orchestrate.start", [run_id]), start_broker=bid,
                             start_heartbeat=now)
                    summary["restarted"] += 1
                return
            queues = {r["name"]: r["queue"] for r in d["plan"]}
            for name, st in d["steps"].items():
                lost = (st["state"] == "queued" and st.get("broker") != bid) or (
                    st["state"] == "running" and now - st.get("heartbeat", 0) > STALE_AFTER_S)
                if lost:
                    st.update(state="queued", task_id=send_step(producer, run_id, name, queues[name]),
                              broker=bid, queued_at=now)
                    summary["requeued"] += 1

        data = record.update(fn)
        if data["plan"] is not None:
            advance(row["run_id"], s)
    return summary


# ----------------------------------------------------------------------------------------------
# orchestration tasks (thin: they call the functions above)


@app.task(name="orchestrate.start", bind=True)
def start_task(self, run_id: str) -> str:
    return start(run_id)


@app.task(name="orchestrate.reconcile")
def reconcile_task() -> dict[str, int]:
    return reconcile()


@app.task(name=RUN_STEP, bind=True)
def run_step_task(self, run_id: str, step_name: str) -> str:
    """Compute step ``step_name`` of run ``run_id`` (whatever queue delivered it); returns its outcome."""
    return run_step(run_id, step_name, task_id=self.request.id, worker=self.request.hostname)


@worker_ready.connect
def _reconcile_on_start(sender: Any = None, **_: Any) -> None:
    """When a worker serving the ``orchestrate`` queue starts, reconcile (via the queue)."""
    try:
        queues = set(sender.app.amqp.queues.consume_from or {})
    except AttributeError:
        return
    if "orchestrate" in queues:
        sender.app.send_task("orchestrate.reconcile")
