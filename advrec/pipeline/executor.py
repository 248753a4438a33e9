"""Running steps: :func:`execute_step` (shared by both executors) and the in-process executor.

The Celery executor (``advrec.pipeline.celery_executor``) calls the same :func:`execute_step`
inside workers; only the scheduling differs.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from advrec.pipeline.context import ProgressFn, StepContext
from advrec.pipeline.dag import Plan, Step, dataset_step, plan
from advrec.pipeline.record import RunRecord, publish_report
from advrec.pipeline.spec import EvaluationSpec
from advrec.pipeline.steps import STEP_FUNCTIONS
from advrec.pipeline.threads import threads_for
from advrec_common.settings import resolve_device
from advrec_common.store import ArtifactStore


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
    _deterministic_torch(step.kind)
    roles = {role: (keys[v] if isinstance(v, str) else [keys[n] for n in v]) for role, v in step.inputs.items()}
    meta: dict[str, Any] = {"step": step.name, "kind": step.kind, "params": step.params, "deps": roles}
    with store.writing(step.key, meta) as out:
        ctx = StepContext(step, store, out, keys, resolve_device(device), progress)
        STEP_FUNCTIONS[step.kind](ctx)
        meta["result"] = ctx.meta  # written to meta.json when the block exits
    return True


def _deterministic_torch(kind: str = "") -> None:
    """Same numbers in every process: a fixed CPU thread count per step kind (measured once per
    machine and home, :mod:`advrec.pipeline.threads`) and deterministic kernels.

    Multi-threaded CPU backward passes of some ops (ACF's attention, DVBPR's CNN) otherwise vary
    from run to run; ``warn_only`` keeps ops without a deterministic kernel running (with a warning).
    """
    import os

    import torch

    from advrec_common.settings import get_settings

    settings = get_settings()
    n = threads_for(kind, settings.home, settings.torch_threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if not torch.are_deterministic_algorithms_enabled():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)


def plan_run(spec: EvaluationSpec, store: ArtifactStore, device: str = "auto") -> Plan:
    """Materialise the dataset step, then plan every other step."""
    ds = dataset_step(spec)
    execute_step(ds, None, store, device)
    return plan(spec, int(store.meta(ds.key)["result"]["n_items"]))


def run_inprocess(spec: EvaluationSpec, store: ArtifactStore, runs_dir: Path, *, run_id: str | None = None,
                  device: str = "auto", show_progress: bool = True, stop_after: int | None = None) -> RunRecord:
    """Run (or resume) the whole evaluation in this process; returns the run's record.

    ``run_id`` of an existing run resumes it. ``stop_after`` computes at most that many steps
    (used by tests to simulate a crash mid-way).
    """
    if run_id is not None and (Path(runs_dir) / run_id / "record.json").is_file():
        record = RunRecord.open(runs_dir, run_id)
    else:
        record = RunRecord.create(runs_dir, spec.model_dump(mode="json"), run_id=run_id)
    record.set_state("running")
    try:
        p = plan_run(spec, store, device)
        record.set_plan(p.to_json())
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(p), desc=spec.name, unit="step")
        computed = 0
        for step in p:
            if record.read().get("cancel_requested"):
                raise CancelledRun()
            if stop_after is not None and computed >= stop_after and not store.has(step.key):
                record.set_state("interrupted")
                if bar:
                    bar.close()
                return record
            record.set_step(step.name, state="running")
            t0 = time.perf_counter()
            if bar:
                bar.set_postfix_str(step.name[-50:])
            did = execute_step(step, p, store, device)
            computed += int(did)
            record.set_step(step.name, state="done" if did else "cached", seconds=round(time.perf_counter() - t0, 3))
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        publish_report(store, p["report"].key, record.dir)
        record.update(lambda d: d.update(report_key=p["report"].key))
        record.set_state("done")
    except CancelledRun:
        record.set_state("cancelled")
    except Exception as exc:
        record.set_state("failed", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        raise
    return record
