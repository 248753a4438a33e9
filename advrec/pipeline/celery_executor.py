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
A step kind with a long loop that does not call the callback (generating a large demo catalog,
building a report) is stopped all the same: a watcher thread sees the job's cancel marker and, if
the step has not stopped at its own next check within :data:`INTERRUPT_AFTER_S`, raises
:class:`StepInterrupted` in the step's thread at its next Python instruction, as Ctrl-C interrupts
a program (:func:`_interrupt_thread`). Nothing partial is stored either way: the step's scratch
folder becomes an artifact only when the step returns.

Every worker also runs the recovery loop (:mod:`advrec.pipeline.recovery`) in a thread: no single
worker is special, and recovery goes on as long as any worker lives.
"""

from __future__ import annotations

import ctypes
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
    CANCEL_MARKER,
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

CHECK_EVERY_S = 0.25  # the watcher and the progress callback look for the cancel marker this often
INTERRUPT_AFTER_S = 0.5  # then the watcher interrupts a step that has not stopped at its own check


class StepInterrupted(Cancelled):
    """Raised inside a step's thread by the cancel watcher (the step did not stop at a progress check)."""

    def __init__(self, detail: str = "the job was cancelled; the step was interrupted") -> None:
        super().__init__(detail)


def _interrupt_thread(thread_id: int, exc: type[BaseException]) -> bool:
    """Raise ``exc`` in thread ``thread_id`` at its next Python instruction (CPython's async exception,
    what a signal handler's KeyboardInterrupt is to the main thread); True if the thread was found."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))
    return done == 1


@contextmanager
def _cancel_watcher(record: RunRecord, thread_id: int, step: str) -> Iterator[None]:
    """While the block runs: once the run's cancel marker appears, give the step INTERRUPT_AFTER_S to stop at
    its own progress check, then interrupt its thread (again every second until the block has ended)."""
    stop = threading.Event()
    active = threading.Lock()  # held by the block: an interrupt is only ever raised inside it
    marker = record.dir / CANCEL_MARKER

    def watch() -> None:
        seen = None
        while not stop.wait(CHECK_EVERY_S):
            if seen is None:
                if marker.exists():
                    seen = time.monotonic()
                continue
            if time.monotonic() - seen >= INTERRUPT_AFTER_S:
                with active:
                    if stop.is_set():
                        return
                    log.info("run %s step %s: interrupting the cancelled step", record.run_id, step)
                    _interrupt_thread(thread_id, StepInterrupted)
                seen = time.monotonic()

    thread = threading.Thread(target=watch, name=f"cancel-watch-{record.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            with active:  # no interrupt is raised after this (one raised before surfaces here, at the latest)
                stop.set()
        finally:
            stop.set()
            thread.join(timeout=CHECK_EVERY_S + 1)


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


def cancel_checker(record: RunRecord, every_s: float = CHECK_EVERY_S,
                   latest: dict[str, Any] | None = None) -> Callable[[dict[str, Any]], None]:
    """A progress callback that raises :class:`Cancelled` once the run is cancelled (looks for its cancel
    marker at most every ``every_s`` seconds: a stat, not a parse of the record); keeps the step's latest
    progress in ``latest``."""
    last = [0.0]
    marker = record.dir / CANCEL_MARKER

    def check(info: dict[str, Any]) -> None:
        if latest is not None:
            latest.clear()
            latest.update({k: v for k, v in info.items() if isinstance(v, int | float | str) or v is None})
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if marker.exists():
                raise Cancelled(f"run {record.run_id} was cancelled")

    return check


def run_step(run_id: str, step_name: str, task_id: str | None = None, worker: str | None = None,
             settings: Settings | None = None) -> str:
    """Compute one step of a run (the body of the ``advrec.run_step`` task).

    Returns what happened: ``done``/``cached`` (computed/reused), ``skipped`` (run terminal or
    cancelled, step already finished, or another live delivery is running it), ``failed``
    (the step raised, or exceeded MAX_ATTEMPTS deliveries) or ``cancelled``. Its log lines carry the
    job and step ids; its duration goes to the stack's metrics (:func:`advrec.pipeline.metrics.observe_step`).
    """
    from advrec_common.observability import log_context

    with log_context(job_id=run_id, step=step_name):
        return _run_step(run_id, step_name, task_id, worker, _settings(settings))


def _observe(settings: Settings, kind: str, outcome: str, seconds: float) -> None:
    from advrec.pipeline.metrics import observe_step

    try:
        observe_step(settings, kind, outcome, seconds)
    except Exception as exc:  # a metric never fails a step
        log.warning("step metric not recorded: %s", exc)


def _run_step(run_id: str, step_name: str, task_id: str | None, worker: str | None, s: Settings) -> str:
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
        with _heartbeat(record, touch), _cancel_watcher(record, threading.get_ident(), step_name):
            computed = _execute_step(plan[step_name], plan, store, s.device,
                                     progress=cancel_checker(record, latest=latest))
    except Exception as exc:
        if _is_cancel(exc):
            record.set_step(step_name, state="cancelled", seconds=round(time.perf_counter() - t0, 3))
            log.info("run %s step %s cancelled after %.1f s", run_id, step_name, time.perf_counter() - t0)
            _observe(s, plan[step_name].kind, "cancelled", time.perf_counter() - t0)
            return "cancelled"
        short = f"{type(exc).__name__}: {exc}"
        error = f"{short}\n{traceback.format_exc(limit=5)}"

        def fail(d: dict[str, Any]) -> None:
            d["steps"][step_name].update(state="failed", error=error)
            if d["state"] not in TERMINAL:  # a job cancelled meanwhile stays cancelled
                d.update(state="failed", error=f"step {step_name} failed: {short}")

        record.update(fail)
        log.exception("run %s step %s failed", run_id, step_name)
        _observe(s, plan[step_name].kind, "failed", time.perf_counter() - t0)
        return "failed"
    outcome = "done" if computed else "cached"
    record.set_step(step_name, state=outcome, seconds=round(time.perf_counter() - t0, 3), finished=time.time())
    if computed:
        _observe(s, plan[step_name].kind, "done", time.perf_counter() - t0)
    log.info("run %s step %s %s in %.1f s", run_id, step_name, outcome, time.perf_counter() - t0)
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


def _worker_identity(sender: Any) -> tuple[str | None, list[str], int]:
    """(node name, queues it consumes, concurrency) of the worker whose consumer is ``sender``."""
    node = getattr(sender, "hostname", None)
    try:
        queues = sorted(q.name for q in sender.task_consumer.queues)
    except AttributeError:
        queues = []
    pool = getattr(sender, "pool", None)  # its limit: 1 for a solo pool, the process count of a prefork one
    concurrency = getattr(pool, "limit", None) or getattr(getattr(sender, "controller", None), "concurrency", 1) or 1
    return node, [q for q in queues if "pidbox" not in q and not q.endswith(".reply")], int(concurrency)


@worker_ready.connect
def _start_recovery(sender: Any = None, **_: Any) -> None:
    """Claim the stack's namespace (a worker of another deployment with the same namespace exits: it would
    take and drop this stack's messages), register in the worker registry, and start this worker's
    recovery loop (a thread; a Redis lock lets one loop of the stack work at a time)."""
    import os

    from advrec.pipeline.recovery import RecoveryLoop
    from advrec_common.errors import Conflict

    node, queues, concurrency = _worker_identity(sender)
    loop = RecoveryLoop(get_settings(), node=node, queues=queues, concurrency=concurrency)
    try:
        loop.register()
    except Conflict as exc:
        log.critical("worker %s stops: %s", node, exc)
        os._exit(78)  # EX_CONFIG: the orchestrator shows it; nothing of the other stack was touched
    except Exception as exc:  # Redis down: the loop registers once it answers
        log.warning("worker %s not registered yet: %s", node, exc)
    loop.start()
    _loops.append(loop)


@worker_shutdown.connect
def _stop_recovery(**_: Any) -> None:
    for loop in _loops:
        loop.stop()
