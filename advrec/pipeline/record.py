"""Durable run records: the state of one evaluation, on disk beside the artifact store.

A record is ``<runs_dir>/<run_id>/record.json``, rewritten atomically under an exclusive file
lock, so the in-process executor, Celery workers and the gateway can all update it. Redis may
run without persistence; the record (not the broker) is the job database, and a restarted stack
re-drives every run whose record is not terminal.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advrec_common.errors import InvalidInput, NotFound
from advrec_common.store import atomic_write

TERMINAL = {"done", "failed", "cancelled"}
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{uuid.uuid4().hex[:6]}"


class RunRecord:
    """Handle on one run's record file; every mutation goes through :meth:`update`."""

    def __init__(self, runs_dir: str | Path, run_id: str):
        if not RUN_ID_RE.match(run_id):
            raise InvalidInput(f"not a run id: {run_id!r}")
        self.run_id = run_id
        self.dir = Path(runs_dir) / run_id
        self.path = self.dir / "record.json"

    # -- creation and access -------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: str | Path, spec: dict[str, Any], run_id: str | None = None,
               executor: str = "inprocess", owner: str | None = None, **extra: Any) -> RunRecord:
        """A new record (state ``queued``); ``owner`` = the owner id of the API key that submitted it."""
        rec = cls(runs_dir, run_id or new_run_id(spec.get("name", "run")))
        rec.dir.mkdir(parents=True, exist_ok=False)
        now = time.time()
        rec._write({
            "run_id": rec.run_id, "spec": spec, "state": "queued", "executor": executor, "created": now,
            "updated": now, "plan": None, "steps": {}, "error": None, "cancel_requested": False, "owner": owner,
            **extra,
        })
        return rec

    @classmethod
    def open(cls, runs_dir: str | Path, run_id: str) -> RunRecord:
        rec = cls(runs_dir, run_id)
        if not rec.path.is_file():
            raise NotFound(f"unknown run {run_id!r}")
        return rec

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def _write(self, data: dict[str, Any]) -> None:
        # compact: the C encoder (indent would take the pure-Python one, ~10x slower on a 150 KB record
        # rewritten at every step change: 12 s of a demo run); `advrec show` is the readable view
        atomic_write(self.path, json.dumps(data, separators=(",", ":")))
        from advrec.pipeline import job_index

        job_index.write(self.dir.parent, data, summary(data))  # the lists read the index, never every record

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / "record.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def update(self, fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Apply ``fn`` to the record under the lock and save it; returns the new record."""
        with self._locked():
            data = self.read()
            fn(data)
            data["updated"] = time.time()
            self._write(data)
            return data

    # -- common mutations ----------------------------------------------------------------------
    def set_plan(self, plan_rows: list[dict[str, Any]]) -> None:
        def fn(d: dict[str, Any]) -> None:
            d["plan"] = plan_rows
            for row in plan_rows:
                d["steps"].setdefault(row["name"], {"state": "pending", "key": row["key"], "kind": row["kind"],
                                                    "attempts": 0, "error": None, "seconds": None})
        self.update(fn)

    def set_step(self, name: str, **fields: Any) -> None:
        def fn(d: dict[str, Any]) -> None:
            d["steps"].setdefault(name, {"state": "pending", "attempts": 0, "error": None, "seconds": None})
            d["steps"][name].update(fields)
        self.update(fn)

    def set_state(self, state: str, error: str | None = None) -> None:
        def fn(d: dict[str, Any]) -> None:
            if d["state"] in TERMINAL and state not in TERMINAL:
                return
            d["state"] = state
            if error is not None:
                d["error"] = error
        self.update(fn)


def publish_report(store: Any, report_key: str, run_dir: Path) -> None:
    """Copy the report artifact's files (results.json, tables, report.html) into ``<run_dir>/report``."""
    src = store.open(report_key)
    dst = run_dir / "report"
    tmp = run_dir / "report.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def progress_of(record: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Done/total steps, the steps currently running and, when every step has a work estimate
    (``units``, written by the Celery planner), the progress in work units: finished steps count whole,
    a running step by its own reported ``done/total``; with it ``eta_seconds`` (:func:`eta_of`)."""
    steps = record.get("steps", {})
    done = sum(1 for s in steps.values() if s["state"] in ("done", "cached"))
    out: dict[str, Any] = {
        "done": done,
        "total": len(steps),
        "fraction": (done / len(steps)) if steps else 0.0,
        "running": sorted(n for n, s in steps.items() if s["state"] == "running"),
        "failed": sorted(n for n, s in steps.items() if s["state"] == "failed"),
        "work": None,
    }
    units = {n: s.get("units") for n, s in steps.items()}
    if steps and all(isinstance(u, int | float) and u >= 0 for u in units.values()):
        # both sums by sum() over the same terms in the same order: when every step is done the terms are
        # equal and so are the sums (Python 3.12's sum() compensates rounding, a += loop does not)
        total = sum(float(u) for u in units.values())
        work_done = sum(float(units[n]) * (1.0 if st["state"] in ("done", "cached") else _running_fraction(st))
                        for n, st in steps.items())
        out["work"] = {"done": work_done, "total": total, "fraction": work_done / total if total > 0 else 0.0,
                       "eta_seconds": eta_of(record, time.time() if now is None else now)}
    return out


def _running_fraction(st: dict[str, Any]) -> float:
    """How far a running step is by its own ``done/total`` (0 when it has not said, or is not running)."""
    p = st.get("progress") or {}
    if st["state"] == "running" and isinstance(p.get("done"), int | float) and isinstance(p.get("total"), int | float) \
            and p["total"] > 0:
        return min(max(p["done"] / p["total"], 0.0), 1.0)
    return 0.0


def eta_of(record: dict[str, Any], now: float) -> float | None:
    """Remaining wall seconds of a job whose steps carry work estimates: the remaining work priced per
    step kind by the seconds its finished steps took (:class:`advrec.pipeline.work.EtaModel`, as the
    local progress bar), divided by the parallelism observed so far (compute seconds per wall second,
    at least 1). None until some computed step has finished."""
    from advrec.pipeline.work import EtaModel

    steps = record.get("steps", {})
    kinds = {row.get("name"): row.get("kind") for row in record.get("plan") or [] if isinstance(row, dict)}
    model = EtaModel()
    compute, starts, measured = 0.0, [], False
    for name, st in steps.items():
        model.add(name, kinds.get(name) or st.get("kind") or name.split("/", 1)[0], float(st["units"]))
        if isinstance(st.get("started"), int | float):
            starts.append(float(st["started"]))
        if st["state"] == "done" and isinstance(st.get("seconds"), int | float):
            model.finish(name, float(st["seconds"]))
            compute += float(st["seconds"])
            measured = True
        elif st["state"] in ("done", "cached"):
            model.finish(name, None)
        elif st["state"] == "running":
            model.advance(name, _running_fraction(st))
            if isinstance(st.get("started"), int | float):
                compute += max(0.0, now - float(st["started"]))
    if not measured or not starts:
        return None
    wall = max(now - min(starts), 1e-6)
    return model.remaining_seconds() / max(compute / wall, 1.0)


def summary(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's row in the job lists (what the job index keeps of it)."""
    return {"run_id": rec["run_id"], "name": rec["spec"].get("name"), "state": rec["state"],
            "executor": rec.get("executor"), "created": rec["created"], "updated": rec["updated"],
            "owner": rec.get("owner"), "progress": progress_of(rec), "error": rec.get("error")}


def list_runs(runs_dir: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Summaries of every run (at most ``limit``), newest first, from the job index
    (:mod:`advrec.pipeline.job_index`)."""
    rows, _ = list_page(runs_dir, None, limit if limit is not None else 10**9, all_owners=True)
    return rows


def list_page(runs_dir: str | Path, owner: str | None, limit: int, before: str | None = None,
              all_owners: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the job list of ``owner`` (of everyone with ``all_owners``), newest first, older than job
    ``before``; and the ``before`` of the next page (None on the last)."""
    from advrec.pipeline import job_index

    job_index.ensure(runs_dir, summary)
    return job_index.page(runs_dir, owner, limit, before, all_owners)


def active_runs(runs_dir: str | Path, owner: str | None = None) -> list[str]:
    """Ids of the unfinished runs (of ``owner`` when given), from the job index."""
    from advrec.pipeline import job_index

    job_index.ensure(runs_dir, summary)
    return job_index.active(runs_dir, owner)
