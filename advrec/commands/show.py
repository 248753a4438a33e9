"""``advrec show RUN``: one run's state, error, time per step kind and where its report is.

Local runs are read from their record (``<home>/runs/RUN/record.json``); with ``--server`` (or
when RUN is not local and ``ADVREC_SERVER`` is set) the job of a gateway, through the client.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from advrec.commands.run import _common, _settings, job_source_args, open_local_run

_DONE = ("done", "cached")


def time_per_kind(steps: dict[str, dict[str, Any]]) -> list[tuple[str, int, int, int, float]]:
    """(kind, steps, computed, reused, seconds of the computed ones) per step kind, slowest first."""
    rows: dict[str, list[float]] = {}
    for name, s in steps.items():
        kind = s.get("kind") or name.split("/", 1)[0]
        r = rows.setdefault(kind, [0, 0, 0, 0.0])
        r[0] += 1
        if s.get("state") == "done":
            r[1] += 1
            r[3] += float(s.get("seconds") or 0.0)
        elif s.get("state") == "cached":
            r[2] += 1
    return sorted(((k, int(a), int(b), int(c), d) for k, (a, b, c, d) in rows.items()), key=lambda r: -r[4])


def describe(doc: dict[str, Any], *, run_dir: Path | None = None, server: str | None = None) -> str:
    """The text of ``advrec show`` for a run record (local) or a gateway job status (``server``)."""
    run_id = doc.get("run_id") or doc.get("id")
    steps = doc.get("steps") or {}
    state = doc.get("state", "?")
    where = doc.get("failed_step") if state == "failed" else doc.get("interrupted_step") if state == "interrupted" \
        else None
    lines = [f"run      {run_id}" + (f"  (job of {server})" if server else ""),
             f"name     {(doc.get('spec') or {}).get('name', doc.get('name'))}",
             f"state    {state}" + (f" (at step {where})" if where else "")]
    for label in ("created", "updated"):
        if isinstance(doc.get(label), int | float):
            lines.append(f"{label:<8} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc[label]))}")
    if doc.get("error"):
        err = doc["error"].strip().splitlines()
        lines.append(f"error    {err[0]}")
        if run_dir is not None and (run_dir / "error.log").is_file():
            lines.append(f"         traceback: {run_dir / 'error.log'}")
    for row in doc.get("warnings") or []:  # what the checks before the run noticed
        lines.append(f"warning  {row.get('loc')}: {row.get('msg')}")
    if steps:
        done = sum(1 for s in steps.values() if s.get("state") in _DONE)
        failed = [n for n, s in steps.items() if s.get("state") == "failed"]
        running = [n for n, s in steps.items() if s.get("state") in ("running", "interrupted")]
        lines.append(f"steps    {done}/{len(steps)} finished" + (f", failed: {', '.join(failed)}" if failed else "")
                     + (f", unfinished: {', '.join(running)}" if running else ""))
        rows = time_per_kind(steps)
        total = sum(r[4] for r in rows) or 1.0
        lines.append("time per step kind (computed steps; reused ones cost nothing):")
        lines.append(f"  {'kind':<14} {'steps':>5} {'computed':>8} {'reused':>6} {'seconds':>9} {'share':>6}")
        for kind, n, comp, reused, sec in rows:
            lines.append(f"  {kind:<14} {n:>5} {comp:>8} {reused:>6} {sec:>9.1f} {100 * sec / total:>5.0f}%")
        wall = (doc["updated"] - doc["created"]) if all(isinstance(doc.get(k), int | float)
                                                          for k in ("created", "updated")) else None
        if wall and total > 1.1 * wall:  # --jobs > 1: the steps' seconds overlap
            lines.append(f"  (steps ran at once: their {total:.0f} s of compute took {wall:.0f} s of wall time)")
    if run_dir is not None:
        report = run_dir / "report" / "report.html"
        lines.append(f"report   {report}" if report.is_file() else "report   (none yet)")
        if state not in ("done", "cancelled"):
            lines.append(f"resume   advrec run --resume {run_id}")
    elif server and state == "done":
        lines.append(f"report   advrec download {run_id} -o report.html --server {server}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    local = (settings.runs_dir / args.run / "record.json").is_file()
    if args.server or (not local and os.environ.get("ADVREC_SERVER")):
        from advrec.commands.client import client_from_args

        server = args.server or os.environ.get("ADVREC_SERVER")
        with client_from_args(args) as client:
            status = client.status(args.run)
        print(describe(status, server=server))
        return 0
    record = open_local_run(settings, args.run)
    print(describe(record.read(), run_dir=record.dir))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="a run's state, error, time per step kind and report path "
                                    "(--server: a gateway job)")
    p.add_argument("run", help="local run id, or a job id with --server")
    job_source_args(p)
    _common(p)
    p.set_defaults(func=cmd_show)
