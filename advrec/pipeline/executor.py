"""Running steps: :func:`execute_step` (shared by both executors) and the in-process executor.

The Celery executor (``advrec.pipeline.celery_executor``) calls the same :func:`execute_step`
inside workers; only the scheduling differs.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advrec.pipeline.context import ProgressFn, StepContext
from advrec.pipeline.dag import Plan, Step, dataset_step, plan
from advrec.pipeline.record import RunRecord, publish_report
from advrec.pipeline.spec import EvaluationSpec
from advrec.pipeline.step_support import step_seed
from advrec.pipeline.steps import STEP_FUNCTIONS
from advrec.pipeline.threads import threads_for
from advrec_common.errors import InvalidInput, Unavailable
from advrec_common.settings import resolve_device
from advrec_common.store import ArtifactStore

ERROR_LOG = "error.log"  # the full traceback of a failed run, in its run folder


class CancelledRun(Exception):
    """The run's record asks for cancellation."""


def execute_step(step: Step, plan_: Plan | None, store: ArtifactStore, device: str = "auto",
                 progress: ProgressFn | None = None) -> bool:
    """Compute ``step`` unless its artifact exists; returns True if it computed, False if reused."""
    if store.has(step.key):
        return False
    keys = {d: plan_[d].key for d in step.deps} if plan_ is not None else {}
    for d, k in keys.items():
        if not store.has(k):
            raise RuntimeError(f"step {step.name}: input {d} is not computed")
    threads = _deterministic_torch(step.kind)
    roles = {role: (keys[v] if isinstance(v, str) else [keys[n] for n in v]) for role, v in step.inputs.items()}
    resolved = resolve_device(device)
    # how it was computed: a training step's numbers depend on the CPU thread count (weight-gradient
    # sums split across threads) and on the kernels the CPU's vector ISA selects (AVX2 and AVX-512
    # round differently), so results.json reports them (``environment``)
    meta: dict[str, Any] = {"step": step.name, "kind": step.kind, "params": step.params, "deps": roles,
                            "compute": {"threads": threads, "device": resolved, **_build_and_cpu()}}
    with store.writing(step.key, meta) as out, _seeded_global_rng(step.name):
        ctx = StepContext(step, store, out, keys, resolved, progress)
        STEP_FUNCTIONS[step.kind](ctx)
        meta["result"] = ctx.meta  # written to meta.json when the block exits
    return True


@contextmanager
def _seeded_global_rng(name: str) -> Iterator[None]:
    """Run a step from a global torch RNG state of its own (seeded by its name): a draw from the global RNG that
    a step does not seed itself then does not depend on which steps its process computed before (under any
    ``--jobs``, on any worker, in a resumed run). Draws that must not depend on what a step *loads* either (a
    model's construction initialises its layers from this RNG) take their own generator, as a deployed random
    defense does (``defend(..., seed=)``). The process's state is restored afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(name))
        yield


def _build_and_cpu() -> dict[str, str]:
    """The torch version and the CPU kernels it dispatches to (``AVX2``, ``AVX512``, ...)."""
    import torch

    return {"torch": torch.__version__, "cpu_isa": torch.backends.cpu.get_cpu_capability()}


def _deterministic_torch(kind: str = "") -> int:
    """Same numbers in every process: a fixed CPU thread count per step kind (measured once per
    machine and home, :mod:`advrec.pipeline.threads`) and deterministic kernels; returns the count.

    Multi-threaded CPU backward passes of some ops (ACF's attention, DVBPR's CNN) otherwise vary
    from run to run; ``warn_only`` keeps ops without a deterministic kernel running (with a warning).
    """
    import torch

    from advrec_common.settings import get_settings

    settings = get_settings()
    n = threads_for(kind, settings.home, settings.torch_threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if not torch.are_deterministic_algorithms_enabled():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)
    return n


def plan_run(spec: EvaluationSpec, store: ArtifactStore, device: str = "auto") -> Plan:
    """Materialise the dataset step, then plan every other step."""
    ds = dataset_step(spec)
    execute_step(ds, None, store, device)
    return plan(spec, int(store.meta(ds.key)["result"]["n_items"]))


class _RunProgress:
    """One bar for the whole run, in work units (:mod:`advrec.pipeline.work`), with the current
    step's own progress (images, epochs) and a per-kind calibrated ETA."""

    def __init__(self, spec: EvaluationSpec, p: Plan, store: ArtifactStore, show: bool):
        from advrec.pipeline.work import EtaModel, estimate, work_facts

        self.spec, self.plan, self.store = spec, p, store
        self.facts = work_facts(spec, p, store)
        self.eta = EtaModel()
        self.todo = [s for s in p if not store.has(s.key)]
        for step in self.todo:
            self.eta.add(step.name, step.kind, estimate(step, self.facts).units)
        self._estimate = estimate
        self.current: Step | None = None
        self.running: dict[str, Step] = {}  # started, not finished (several with jobs > 1)
        self.index = 0
        self.inner = ""
        self.started = time.perf_counter()
        self.busy_seconds = 0.0  # compute seconds of the finished steps (their sum outgrows the wall with jobs > 1)
        self.busy_wall = 0.0  # wall seconds from the start to the last step that finished
        self._drawn = 0.0
        self.bar = None
        self.finished = 0  # steps finished (computed or reused)
        # a log file, not a terminal: one line per computed step instead of a bar redrawn in place
        self.lines = show and bool(self.todo) and not sys.stderr.isatty()
        if show and self.todo and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=round(self.eta.total), desc=spec.name, unit="wu", smoothing=0,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}")

    def start(self, step: Step, index: int) -> None:
        self.current, self.inner, self.index = step, "", index
        self.running[step.name] = step
        self._draw(force=True)

    def inner_progress(self, info: dict[str, Any], name: str | None = None) -> None:
        """A running step's own progress: ``{"done", "total", "unit"}`` (``name``: which step, when
        several run at once; default the one started last)."""
        step = self.running.get(name) if name is not None else self.current
        if step is None or step.name not in self.eta.units:
            return
        done, total = info.get("done"), info.get("total")
        if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
            self.eta.advance(step.name, done / total)
            if step is self.current:
                self.inner = f"{int(done)}/{int(total)} {info.get('unit', '')}".rstrip()
        self._draw()

    def finish(self, step: Step, computed: bool, seconds: float) -> None:
        if step.name in self.eta.units:
            self.eta.finish(step.name, seconds if computed else None)
        if computed:
            self.busy_seconds += seconds
            self.busy_wall = time.perf_counter() - self.started
            self._refine(step)
        self.running.pop(step.name, None)
        self.finished += 1
        if self.current is step or self.current is None or self.current.name not in self.running:
            self.current = next(reversed(self.running.values()), None)
            self.inner = ""
        if self.lines and computed:
            self._line(step, seconds)
        self._draw(force=True)

    def _line(self, step: Step, seconds: float) -> None:
        from advrec.pipeline.work import format_seconds, wall_eta

        share = self.eta.done / self.eta.total if self.eta.total else 1.0
        eta = wall_eta(self.eta.remaining_seconds(), self.busy_seconds, self.busy_wall)
        print(f"{self.spec.name}: step {self.finished}/{len(self.plan)} {step.name} done in {seconds:.1f} s; "
              f"{share:.0%} of the work, ETA {format_seconds(eta)}", file=sys.stderr, flush=True)

    def _refine(self, step: Step) -> None:
        """New facts from a finished step (the extractor's input size, origin items per shard)."""
        from advrec.pipeline.work import origin_items_per_shard

        if step.kind == "extractor":
            from advrec_common.vision.artifact import extractor_info

            ext = step.name.split("/", 1)[1]
            backbone, size = self.facts.extractors.get(ext, (None, None))
            info = extractor_info(self.store, step.key)
            self.facts.extractors[ext] = (info.get("backbone") or backbone, size or info.get("input_size"))
        elif step.kind == "scenario":
            from services.extractor.artifacts import load_features
            from services.recommender.artifacts import load_scenario

            origin = load_scenario(self.store, step.key)["origin"]
            shards = {tuple(s.params["items"]) for s in self.plan if s.kind == "attack_shard"}
            per: dict[tuple[int, int], int] = {}
            for s in self.plan:  # the first extractor's counts stand for all (exact with catalog labels)
                if s.kind == "features":
                    feats = load_features(self.store, s.key, arrays=False)
                    if origin in feats.category_names:
                        per = origin_items_per_shard(feats.categories.tolist(), feats.category_names.index(origin),
                                                     sorted(shards))  # type: ignore[arg-type]
                    break
            self.facts.origin_items = per or None
        else:
            return
        for s in self.todo:
            if s.kind in ("features", "attack_shard", "placebo") and self.eta.done_units.get(s.name, 0.0) == 0.0:
                self.eta.set_units(s.name, self._estimate(s, self.facts).units)
        if self.bar is not None:
            self.bar.total = round(self.eta.total)

    def _draw(self, force: bool = False) -> None:
        from advrec.pipeline.work import format_seconds, wall_eta

        if self.bar is None:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < 0.2:
            return
        self._drawn = now
        step = self.current
        where = f"step {self.index + 1}/{len(self.plan)} {step.name}" if step is not None else "done"
        if len(self.running) > 1:
            where = f"{len(self.running)} steps running, latest {step.name}" if step is not None else where
        self.bar.n = min(round(self.eta.done), self.bar.total)
        eta = wall_eta(self.eta.remaining_seconds(), self.busy_seconds, self.busy_wall)
        self.bar.set_postfix_str(f"ETA {format_seconds(eta)} | {where}"
                                 + (f": {self.inner}" if self.inner else ""), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_WORKER_PROGRESS: Any = None  # a worker process's queue to the parent (set by _init_worker)


def _init_worker(queue: Any) -> None:
    """A worker of :func:`_run_parallel`: Ctrl-C is the parent's to handle (it terminates the workers)."""
    import signal

    global _WORKER_PROGRESS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while it spawned this process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _WORKER_PROGRESS = queue


def _execute_in_worker(step: Step, plan_: Plan, store_root: str, device: str) -> tuple[bool, float]:
    """:func:`execute_step` in a worker process; its inner progress goes to the parent's queue."""
    queue = _WORKER_PROGRESS
    last = [0.0]

    def progress(info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if queue is not None and now - last[0] >= 0.2:
            last[0] = now
            queue.put((step.name, info))

    t0 = time.perf_counter()
    did = execute_step(step, plan_, ArtifactStore(store_root), device, progress=progress)
    return did, time.perf_counter() - t0


def _fail_first(running: dict[str, Step], step: Step) -> None:
    """Put ``step`` first in ``running`` (in place): the caller reports it as the failed one."""
    others = [s for n, s in running.items() if n != step.name]
    running.clear()
    running.update({s.name: s for s in (step, *others)})


def _blocking_sigint(start: Callable[[], Any]) -> Any:
    """``start()`` with SIGINT blocked: a process it spawns inherits the mask, so Ctrl-C cannot hit it
    before :func:`_init_worker` ignores the signal; a Ctrl-C meanwhile stays pending for this process
    (delivered when the mask is restored, never lost).

    multiprocessing's resource tracker is started first: launching it (on the first spawn of the
    process) *unblocks* SIGINT when it is done (``resource_tracker.ensure_running`` ends with
    ``SIG_UNBLOCK``), which inside this window left the first worker spawned with Ctrl-C deliverable
    during its start-up: a Ctrl-C then killed it with a traceback (a flaky test, issue 23 item 13)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return start()
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # idempotent; never inside the window (see above)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _run_parallel(p: Plan, store: ArtifactStore, device: str, jobs: int, record: RunRecord,
                  progress: _RunProgress, running: dict[str, Step]) -> None:
    """Compute every step of ``p`` not in the store with up to ``jobs`` worker processes (spawned: a
    forked torch can deadlock), each step as soon as its inputs exist; ``running`` (name -> step) is
    kept current for the caller's error handling, the failed step first. Reused steps cost no
    process. A worker that dies (killed, out of memory) fails its step; on any error or Ctrl-C the
    other workers are terminated (a step's artifact is written atomically: a killed step leaves
    nothing behind)."""
    import multiprocessing
    import queue as queue_module
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    inner: Any = ctx.Queue()
    pending = list(p)
    index = {s.name: i for i, s in enumerate(p)}
    finished: set[str] = set()
    futures: dict[Future, Step] = {}
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(inner,))
    try:
        while pending or futures:
            if record.read().get("cancel_requested"):
                raise CancelledRun()
            for step in [s for s in pending if all(d in finished for d in s.deps)]:
                if store.has(step.key):
                    pending.remove(step)
                    record.set_step(step.name, state="cached", seconds=0.0)
                    progress.finish(step, False, 0.0)
                    finished.add(step.name)
                elif len(futures) < jobs:
                    pending.remove(step)
                    record.set_step(step.name, state="running")
                    progress.start(step, index[step.name])
                    running[step.name] = step
                    # workers start on demand: with Ctrl-C blocked until they ignore it (never lost here)
                    futures[_blocking_sigint(lambda step=step: pool.submit(
                        _execute_in_worker, step, p, str(store.root), device))] = step
            if not futures:
                continue
            done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
            try:  # the steps' own progress
                while True:
                    name, info = inner.get_nowait()
                    progress.inner_progress(info, name)
            except queue_module.Empty:
                pass
            for fut in done:
                step = futures.pop(fut)
                try:
                    did, seconds = fut.result()  # a step's error is raised here
                except BrokenProcessPool:  # a worker died; the pool then stops every worker
                    _fail_first(running, step)
                    raise Unavailable(f"a worker process died (killed, out of memory?) while computing "
                                      f"{', '.join(running)}; every finished step is stored, resume the run "
                                      "to go on") from None
                except BaseException:
                    _fail_first(running, step)
                    raise
                running.pop(step.name)
                record.set_step(step.name, state="done" if did else "cached", seconds=round(seconds, 3))
                progress.finish(step, did, seconds)
                finished.add(step.name)
    except BaseException:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        inner.close()
        inner.cancel_join_thread()  # a killed writer must not block this process's exit


def _terminate_workers(pool: Any) -> None:
    """Stop a process pool's workers now (Python 3.14 has ``terminate_workers``; before, its processes)."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()


def _spec_changes(record: RunRecord, spec: EvaluationSpec) -> list[str]:
    """What differs between a run's recorded spec and ``spec`` (both as this version parses them,
    so fields added since the run was recorded do not count as changes)."""
    from advrec.pipeline.spec import parse_spec, spec_differences

    recorded = record.read()["spec"]
    try:
        recorded = parse_spec(recorded).model_dump(mode="json")
    except InvalidInput as exc:
        return [f"the recorded spec is no longer valid ({exc})"]
    return spec_differences(recorded, spec.model_dump(mode="json"))


def run_inprocess(spec: EvaluationSpec, store: ArtifactStore, runs_dir: Path, *, run_id: str | None = None,
                  device: str = "auto", show_progress: bool = True, stop_after: int | None = None,
                  announce: Callable[[RunRecord, bool], None] | None = None,
                  warnings: list[dict[str, str]] | None = None, jobs: int = 1) -> RunRecord:
    """Run (or resume) the whole evaluation in this process; returns the run's record.

    ``run_id`` of an existing run resumes it: its spec must equal ``spec`` (InvalidInput naming
    what differs otherwise). ``announce(record, resumed)`` is called once the record exists, before
    any work. ``warnings``: what the preflight noticed (``{"loc", "msg"}`` rows), kept in a new run's
    record for ``advrec show``. ``jobs`` > 1 computes up to that many ready steps at once, each in a
    worker process (the same numbers: every step is a function of its inputs, with its pinned thread
    count). ``stop_after`` computes at most that many steps (used by tests to simulate a crash
    mid-way). Ctrl-C (KeyboardInterrupt) marks the run and its running step "interrupted" and is
    re-raised; any other exception marks them "failed", writes the traceback to the run's
    ``error.log`` and is re-raised.
    """
    resumed = run_id is not None and (Path(runs_dir) / run_id / "record.json").is_file()
    if resumed:
        record = RunRecord.open(runs_dir, run_id)  # type: ignore[arg-type]
        changes = _spec_changes(record, spec)
        if changes:
            raise InvalidInput(
                f"run {run_id} was started with another spec; it differs in: {'; '.join(changes[:8])}"
                + (f" (and {len(changes) - 8} more)" if len(changes) > 8 else "")
                + ". Resume it with its own spec (`advrec run --resume RUN` reads it from the run), or start a "
                  "new run: every step the two specs share is reused from the store")
    else:
        record = RunRecord.create(runs_dir, spec.model_dump(mode="json"), run_id=run_id, warnings=list(warnings or []))
    if announce is not None:
        announce(record, resumed)
    if resumed:  # asked for explicitly: whatever stopped it before (failure, Ctrl-C) is history
        record.update(lambda d: d.update(state="running", error=None, failed_step=None, interrupted_step=None,
                                         cancel_requested=False))
    record.set_state("running")
    progress: _RunProgress | None = None
    step: Step | None = None
    try:
        p = plan_run(spec, store, device)
        record.set_plan(p.to_json())
        progress = _RunProgress(spec, p, store, show_progress)
        computed = 0
        if jobs > 1 and stop_after is None:
            running: dict[str, Step] = {}
            try:
                _run_parallel(p, store, device, jobs, record, progress, running)
            except BaseException:
                stopped = list(running.values())  # the failed step first, then the others cut short
                step = stopped[0] if stopped else None
                for other in stopped[1:]:
                    record.set_step(other.name, state="interrupted")
                raise
        else:
            for index, step in enumerate(p):
                if record.read().get("cancel_requested"):
                    raise CancelledRun()
                if stop_after is not None and computed >= stop_after and not store.has(step.key):
                    record.set_state("interrupted")
                    progress.close()
                    return record
                record.set_step(step.name, state="running")
                progress.start(step, index)
                t0 = time.perf_counter()
                did = execute_step(step, p, store, device, progress=progress.inner_progress)
                seconds = time.perf_counter() - t0
                computed += int(did)
                record.set_step(step.name, state="done" if did else "cached", seconds=round(seconds, 3))
                progress.finish(step, did, seconds)
        step = None
        progress.close()
        publish_report(store, p["report"].key, record.dir)
        record.update(lambda d: d.update(report_key=p["report"].key))
        record.set_state("done")
    except CancelledRun:
        record.set_state("cancelled")
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        if step is not None:
            record.set_step(step.name, state="interrupted")
        record.update(lambda d: d.update(interrupted_step=step.name if step is not None else None))
        record.set_state("interrupted")
        raise
    except Exception as exc:
        if progress is not None:
            progress.close()
        trace = traceback.format_exc()
        (record.dir / ERROR_LOG).write_text(f"run {record.run_id}, step {step.name if step else '(planning)'}\n"
                                            f"{trace}")
        message = f"{type(exc).__name__}: {exc}"
        if step is not None:
            record.set_step(step.name, state="failed", error=message)
        record.update(lambda d: d.update(failed_step=step.name if step is not None else None))
        record.set_state("failed", error=f"{message}\n{traceback.format_exc(limit=5)}")
        raise
    return record
