"""The Celery executor's worker side: the one step task, and every worker's recovery loop.

The bookkeeping (submit, advance, cancel, reconcile) is torch-free and lives in
:mod:`advrec.pipeline.jobs`, which the gateway uses; this module is what the workers load
(``celery -A advrec.pipeline.queue worker``, task module :data:`~advrec.pipeline.queue.TASK_MODULES`).
It imports the step functions (and with them torch) only when a step runs, so a prefork worker's
parent process never touches torch or CUDA.

``run_step`` claims its step in the record (``running``, an attempt count, the worker's name and a
heartbeat written every HEARTBEAT_S), computes it with :func:`execute_step` and a progress callback
that raises :class:`~advrec_common.errors.Cancelled` once the job is cancelled (long steps call it between batches,
so a cancelled job frees its worker within seconds), marks it ``done`` and advances the run.

Every worker also runs the recovery loop (:mod:`advrec.pipeline.recovery`) in a thread: no single
worker is special, and recovery goes on as long as any worker lives.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from advrec.pipeline.dag import Plan
from advrec.pipeline.jobs import (  # noqa: F401  (re-exported: the executor's operations in one place)
    FINISHED,
    advance,
    broker_id,
    cancel,
    reconcile,
    send_step,
    submit,
)
from advrec.pipeline.queue import HEARTBEAT_S, MAX_ATTEMPTS, RUN_STEP, STALE_AFTER_S, app
from advrec.pipeline.record import TERMINAL, RunRecord
from advrec_common.errors import Cancelled, NotFound
from advrec_common.settings import Settings, get_settings
from advrec_common.store import ArtifactStore

log = logging.getLogger(__name__)


# raised by the progress callback inside a step once the run's record asks for cancellation
CancelledRun = Cancelled


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def _execute_step(*args: Any, **kwargs: Any) -> bool:
    """:func:`advrec.pipeline.executor.execute_step`, imported when the first step runs (torch)."""
    from advrec.pipeline.executor import execute_step

    return execute_step(*args, **kwargs)


def _is_cancel(exc: BaseException) -> bool:
    if isinstance(exc, Cancelled):
        return True
    from advrec.pipeline.executor import CancelledRun as InprocessCancelled

    return isinstance(exc, InprocessCancelled)


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


def cancel_checker(record: RunRecord, every_s: float = 1.0,
                   latest: dict[str, Any] | None = None) -> Callable[[dict[str, Any]], None]:
    """A progress callback that raises :class:`Cancelled` once the run is cancelled (reads the
    record at most every ``every_s`` seconds); keeps the step's latest progress in ``latest``."""
    last = [0.0]

    def check(info: dict[str, Any]) -> None:
        if latest is not None:
            latest.clear()
            latest.update({k: v for k, v in info.items() if isinstance(v, int | float | str) or v is None})
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if record.read().get("cancel_requested"):
                raise Cancelled(f"run {record.run_id} was cancelled")

    return check


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
    except NotFound:  # a message about a run this home does not hold (deleted)
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

    latest: dict[str, Any] = {}

    def touch(d: dict[str, Any]) -> None:  # the heartbeat also publishes how far the step is
        d["steps"][step_name].update(heartbeat=time.time(), progress=dict(latest) or None)

    t0 = time.perf_counter()
    try:
        with _heartbeat(record, touch):
            computed = _execute_step(plan[step_name], plan, store, s.device,
                                     progress=cancel_checker(record, latest=latest))
    except Exception as exc:
        if _is_cancel(exc):
            record.set_step(step_name, state="cancelled", seconds=round(time.perf_counter() - t0, 3))
            log.info("run %s step %s cancelled after %.1f s", run_id, step_name, time.perf_counter() - t0)
            return "cancelled"
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


# ----------------------------------------------------------------------------------------------
# tasks (thin: they call the functions above)


@app.task(name=RUN_STEP, bind=True)
def run_step_task(self, run_id: str, step_name: str) -> str:
    """Compute step ``step_name`` of run ``run_id`` (whatever queue delivered it); returns its outcome."""
    return run_step(run_id, step_name, task_id=self.request.id, worker=self.request.hostname)


@app.task(name="orchestrate.reconcile")
def reconcile_task() -> dict[str, int]:
    """Reconcile now (on demand; the recovery loops do it periodically)."""
    return reconcile()


@app.task(name="orchestrate.start")
def start_task(run_id: str) -> str:
    """A start message of an older version: give the run its setup plan and advance it."""
    reconcile()
    return RunRecord.open(get_settings().runs_dir, run_id).read()["state"]


# ----------------------------------------------------------------------------------------------
# every worker runs the recovery loop

_loops: list[Any] = []


@worker_ready.connect
def _start_recovery(sender: Any = None, **_: Any) -> None:
    """Start this worker's recovery loop (a thread; a Redis lock lets one loop of the stack work at a time)."""
    from advrec.pipeline.recovery import RecoveryLoop

    loop = RecoveryLoop(get_settings())
    loop.start()
    _loops.append(loop)


@worker_shutdown.connect
def _stop_recovery(**_: Any) -> None:
    for loop in _loops:
        loop.stop()
