"""Local runs: ``advrec demo``, ``advrec run SPEC``, ``advrec report RUN``, ``advrec list``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from advrec_common.errors import NotFound
from advrec_common.settings import Settings, get_settings


def _settings(args: argparse.Namespace) -> Settings:
    s = get_settings()
    if getattr(args, "home", None):
        s = s.model_copy(update={"home": Path(args.home)})
    return s


def _run(spec, args: argparse.Namespace) -> int:
    from advrec.pipeline.executor import run_inprocess
    from advrec.report import format_summary
    from advrec_common.store import ArtifactStore

    settings = _settings(args)
    store = ArtifactStore(settings.store_dir)
    t0 = time.perf_counter()
    record = run_inprocess(spec, store, settings.runs_dir, run_id=args.resume, device=args.device or settings.device,
                           show_progress=not args.quiet)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from advrec.pipeline.spec import preset

    return _run(preset("demo"), args)


def cmd_run(args: argparse.Namespace) -> int:
    from advrec.pipeline.preflight import preflight
    from advrec.pipeline.spec import read_spec_document

    settings = _settings(args)
    checked = preflight(read_spec_document(args.spec), device=args.device or settings.device,
                        max_pixels=settings.max_image_pixels)
    for loc, msg in checked.warnings:
        print(f"advrec: warning: {loc}: {msg}")
    spec = checked.raise_for_problems(f"{args.spec}: invalid evaluation spec")  # before any work starts
    if args.validate:
        facts = ", ".join(f"{k} {v}" for k, v in checked.facts.items() if isinstance(v, int))
        print(f"spec {spec.name!r} is valid" + (f" ({facts})" if facts else ""))
        return 0
    return _run(spec, args)


def cmd_report(args: argparse.Namespace) -> int:
    from advrec.pipeline.record import RunRecord
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
    record = RunRecord.open(settings.runs_dir, args.run)
    report_dir = record.dir / "report"
    if not (report_dir / "results.json").is_file():
        raise NotFound(f"run {args.run} has no report yet (state: {record.read()['state']})")
    if args.output:
        out = Path(args.output)
        out.write_bytes((report_dir / "report.html").read_bytes())
        print(f"wrote {out}")
    print(format_summary(json.loads((report_dir / "results.json").read_text())))
    print(f"\nreport: {report_dir / 'report.html'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from advrec.pipeline.record import list_runs

    runs = list_runs(_settings(args).runs_dir)
    if not runs:
        print("no runs")
        return 0
    print(f"{'run':<48} {'state':<11} {'steps':>9}  created")
    for r in runs:
        p = r["progress"]
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        print(f"{r['run_id']:<48} {r['state']:<11} {p['done']:>4}/{p['total']:<4}  {created}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="advrec home (store, runs); default $ADVREC_HOME or ./.advrec")


def register(sub: argparse._SubParsersAction) -> None:
    for name, fn, help_ in (
        ("demo", cmd_demo, "run the full study on the generated demo catalog and print its tables"),
        ("run", cmd_run, "run an evaluation spec (YAML/JSON file or a preset name: demo, study)"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        if name == "run":
            p.add_argument("spec", help="spec file or preset name")
            p.add_argument("--validate", action="store_true", help="only validate the spec")
        p.add_argument("--resume", metavar="RUN", help="resume this run id (reuses every stored step)")
        p.add_argument("--device", help="auto, cpu or cuda[:n] (default from settings)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        _common(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("report", help="print a run's tables; -o copies its HTML report (--server: a gateway job)")
    p.add_argument("run", help="local run id, or a job id with --server")
    p.add_argument("-o", "--output", help="write report.html here")
    p.add_argument("--server", help="read a gateway job instead; also used when RUN is not local and "
                   "ADVREC_SERVER is set (key: --api-key or ADVREC_API_KEY)")
    p.add_argument("--api-key", help="gateway API key (env ADVREC_API_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout per request, seconds")
    _common(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("list", help="list local runs and their state")
    _common(p)
    p.set_defaults(func=cmd_list)


__all__ = ["register"]
