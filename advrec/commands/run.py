"""Local runs: ``advrec demo``, ``advrec run SPEC``, ``advrec run --resume RUN``, ``advrec report RUN``,
``advrec list``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from advrec_common.errors import AdvrecError, InvalidInput, NotFound
from advrec_common.settings import Settings, get_settings


def _settings(args: argparse.Namespace) -> Settings:
    """The process's settings, with ``--home`` applied process-wide (``ADVREC_HOME``): the steps read
    the home too (its measured thread counts, its weights folder), not only this command."""
    if getattr(args, "home", None):
        os.environ["ADVREC_HOME"] = str(Path(args.home))
        get_settings.cache_clear()
    return get_settings()


def open_local_run(settings: Settings, run_id: str):
    """The record of local run ``run_id``; NotFound naming the home it looked in (and an earlier
    per-folder home here, if any)."""
    from advrec.pipeline.record import RunRecord

    try:
        return RunRecord.open(settings.runs_dir, run_id)
    except NotFound:
        raise NotFound(f"unknown run {run_id!r} in {settings.home}{earlier_home_hint(settings)}") from None


def earlier_home_hint(settings: Settings) -> str:
    """A note when this folder holds ``.advrec/runs``, the per-folder home advrec used before homes were one
    per user, and no home was chosen (``--home`` / ``ADVREC_HOME``): where those runs went."""
    legacy = Path(".advrec")
    if "ADVREC_HOME" in os.environ or not (legacy / "runs").is_dir() or legacy.resolve() == settings.home.resolve():
        return ""
    return (f"; ./.advrec here is a per-folder home of an earlier advrec (the default is one home per user now, "
            f"{settings.home}): `--home .advrec` reads it, or move its contents into {settings.home}")


def _run(spec, args: argparse.Namespace, warnings: list[tuple[str, str]] = ()) -> int:
    from advrec.pipeline.executor import ERROR_LOG, run_inprocess
    from advrec.report import format_summary
    from advrec_common.store import ArtifactStore

    settings = _settings(args)
    store = ArtifactStore(settings.store_dir)
    t0 = time.perf_counter()
    started: list[str] = []

    def announce(record, resumed: bool) -> None:
        started.append(record.run_id)
        verb = "resuming" if resumed else "started"
        print(f"run {record.run_id} {verb} ({record.dir}); Ctrl-C stops it, "
              f"`advrec run --resume {record.run_id}` continues it", flush=True)

    try:
        record = run_inprocess(spec, store, settings.runs_dir, run_id=args.resume,
                               device=args.device or settings.device, show_progress=not args.quiet,
                               announce=announce, warnings=[{"loc": loc, "msg": msg} for loc, msg in warnings],
                               jobs=_resolve_jobs(args, settings))
    except KeyboardInterrupt:
        if not started:
            raise
        print(f"\nadvrec: run {started[0]} interrupted; every finished step is stored. Resume with:\n"
              f"  advrec run --resume {started[0]}" + (f" --home {args.home}" if getattr(args, "home", None) else ""),
              file=sys.stderr)
        return 130
    except AdvrecError as exc:
        if not started:
            raise
        step = _failed_step(settings.runs_dir, started[0])
        print(f"advrec: error: run {started[0]} failed{f' at step {step}' if step else ''}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not started or getattr(args, "debug", False) or getattr(args, "debug_all", False):
            raise
        step = _failed_step(settings.runs_dir, started[0])
        log = settings.runs_dir / started[0] / ERROR_LOG
        print(f"advrec: error: run {started[0]} failed{f' at step {step}' if step else ''} with an unexpected "
              f"{type(exc).__name__}: {exc}. This is most likely a bug in advrec rather than in your spec; the "
              f"traceback is in {log} (or rerun with --debug to print it), `advrec show {started[0]}` shows the "
              f"run, and `advrec run --resume {started[0]}` continues it once the cause is fixed.", file=sys.stderr)
        return 1
    data = record.read()
    if data["state"] != "done":
        print(f"run {record.run_id}: {data['state']}")
        return 1
    results = json.loads((record.dir / "report" / "results.json").read_text())
    print(format_summary(results))
    computed = sum(1 for s in data["steps"].values() if s["state"] == "done")
    print(f"\nrun {record.run_id} done in {time.perf_counter() - t0:.0f} s "
          f"({computed} steps computed, {len(data['steps']) - computed} reused from the store)")
    print(f"report: {record.dir / 'report' / 'report.html'}")
    print(f"tables: {record.dir / 'report' / 'tables'}")
    return 0


def _resolve_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """``--jobs`` (else ``ADVREC_JOBS``) as a number; ``auto`` measures the machine now and says what it chose."""
    value = args.jobs if getattr(args, "jobs", None) is not None else settings.jobs
    if value != "auto":
        return int(value)
    from advrec.pipeline.parallelism import auto_jobs
    from advrec_common.settings import resolve_device

    choice = auto_jobs(resolve_device(args.device or settings.device))
    if not args.quiet:
        print(f"steps at once: {choice.jobs} (--jobs auto: {choice.reason}; --jobs N sets it)", flush=True)
    return choice.jobs


def _failed_step(runs_dir: Path, run_id: str) -> str | None:
    try:
        return json.loads((runs_dir / run_id / "record.json").read_text()).get("failed_step")
    except (OSError, json.JSONDecodeError):
        return None


def _resume_target(args: argparse.Namespace, settings: Settings) -> dict | None:
    """The record of ``--resume RUN`` (NotFound naming the known runs when there is none)."""
    from advrec.pipeline.record import RunRecord, list_runs

    if not args.resume:
        return None
    if not (settings.runs_dir / args.resume / "record.json").is_file():
        known = [r["run_id"] for r in list_runs(settings.runs_dir)[:5]]
        RunRecord(settings.runs_dir, args.resume)  # InvalidInput for a malformed id
        raise NotFound(f"no run {args.resume!r} in {settings.runs_dir}"
                       + (f"; recent runs: {', '.join(known)}" if known else "; there are no runs yet")
                       + " (advrec list shows them all)")
    return RunRecord.open(settings.runs_dir, args.resume).read()


def cmd_demo(args: argparse.Namespace) -> int:
    from advrec.pipeline.preflight import preflight

    settings = _settings(args)
    _resume_target(args, settings)
    # the same checks as `advrec run demo` (the device above all), before a run is recorded
    spec = preflight({"preset": "demo"}, device=args.device or settings.device,
                     max_pixels=settings.max_image_pixels).raise_for_problems("advrec demo cannot run")
    return _run(spec, args)


def cmd_run(args: argparse.Namespace) -> int:
    from advrec.pipeline.preflight import preflight
    from advrec.pipeline.spec import read_spec_document

    settings = _settings(args)
    previous = _resume_target(args, settings)
    if args.spec is None:
        if previous is None:
            raise InvalidInput("advrec run needs a SPEC (a YAML/JSON file or a preset name), or --resume RUN")
        document, where = previous["spec"], f"the spec of run {args.resume}"
    else:
        document, where = read_spec_document(args.spec), str(args.spec)
    checked = preflight(document, device=args.device or settings.device, max_pixels=settings.max_image_pixels)
    for loc, msg in checked.warnings:
        print(f"advrec: warning: {loc}: {msg}", file=sys.stderr)
    spec = checked.raise_for_problems(f"{where}: invalid evaluation spec")  # before any work starts
    if args.validate:
        facts = ", ".join(f"{k} {v}" for k, v in checked.facts.items() if isinstance(v, int))
        print(f"spec {spec.name!r} is valid" + (f" ({facts})" if facts else ""))
        if checked.facts.get("n_items"):
            from advrec.pipeline.dag import plan
            from advrec.pipeline.work import admission_facts, job_work

            work = job_work(spec, plan(spec, int(checked.facts["n_items"])), admission_facts(spec, checked.facts))
            from advrec.commands._work import format_work

            print(format_work(work.to_json()))
        return 0
    return _run(spec, args, checked.warnings)


def cmd_report(args: argparse.Namespace) -> int:
    from advrec.report import format_summary

    settings = _settings(args)
    local = (settings.runs_dir / args.run / "record.json").is_file()
    if args.server or (not local and os.environ.get("ADVREC_SERVER")):
        # a job of a gateway: the same files, fetched over HTTP
        from advrec.commands.client import client_from_args

        with client_from_args(args) as client:
            results = client.results(args.run)
            out = client.report(args.run, args.output or "report.html")
        print(format_summary(results))
        print(f"\nreport: {out}")
        return 0
    record = open_local_run(settings, args.run)
    report_dir = record.dir / "report"
    if not (report_dir / "results.json").is_file():
        raise NotFound(f"run {args.run} has no report yet (state: {record.read()['state']})")
    html = report_dir / "report.html"
    if args.output:
        Path(args.output).write_bytes(html.read_bytes())
    print(format_summary(json.loads((report_dir / "results.json").read_text())))
    print(f"\nreport: {args.output or html}")  # with -o: the copy just written
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from advrec.pipeline.record import list_runs

    settings = _settings(args)
    runs = list_runs(settings.runs_dir)
    if not runs:
        print(f"no runs in {settings.home}{earlier_home_hint(settings)}")
        return 0
    print(f"{'run':<48} {'state':<11} {'steps':>9}  {'created':<16}  error")
    for r in runs:
        p = r["progress"]
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        error = (r.get("error") or "").strip().splitlines()[:1]
        print(f"{r['run_id']:<48} {r['state']:<11} {p['done']:>4}/{p['total']:<4}  {created:<16}  "
              f"{_clip(error[0], 100) if error else ''}".rstrip())
    return 0


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def job_source_args(p: argparse.ArgumentParser) -> None:
    """--server / --api-key / --timeout: read a gateway job instead of a local run."""
    p.add_argument("--server", help="read a gateway job instead; also used when RUN is not local and "
                   "ADVREC_SERVER is set (key: --api-key or ADVREC_API_KEY)")
    p.add_argument("--api-key", help="gateway API key (env ADVREC_API_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout per request, seconds")


def _jobs(text: str) -> int | str:
    """``--jobs``: ``auto`` or an integer from 1 to 64."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, got {n}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="advrec home (store, runs, trained extractors); default $ADVREC_HOME, else one "
                                  "per user: $XDG_DATA_HOME/advrec or ~/.local/share/advrec")


def register(sub: argparse._SubParsersAction) -> None:
    for name, fn, help_ in (
        ("demo", cmd_demo, "run the full study on the generated demo catalog and print its tables"),
        ("run", cmd_run, "run an evaluation spec (YAML/JSON file or a preset name: demo, study)"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        if name == "run":
            p.add_argument("spec", nargs="?", help="spec file or preset name (with --resume: optional, the run's "
                                                   "own spec is used; if given it must equal it)")
            p.add_argument("--validate", action="store_true", help="only check the spec and what it points at "
                                                                   "(no torch, no compute)")
        p.add_argument("--resume", metavar="RUN", help="resume this run id (reuses every stored step)")
        p.add_argument("--device", help="auto, cpu or cuda[:n] (default from settings)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                       help="compute up to N ready steps at once, each in its own process (same numbers as one at "
                            "a time); default auto (ADVREC_JOBS): one per CPU idle now, within the memory available")
        p.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
        _common(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("report", help="print a run's tables; -o copies its HTML report (--server: a gateway job)")
    p.add_argument("run", help="local run id, or a job id with --server")
    p.add_argument("-o", "--output", help="write report.html here")
    job_source_args(p)
    _common(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("list", help="list local runs and their state")
    _common(p)
    p.set_defaults(func=cmd_list)


__all__ = ["register"]
