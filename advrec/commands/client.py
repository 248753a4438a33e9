"""Remote verbs (talk to a gateway): ``submit``, ``status``, ``wait``, ``results``, ``download``,
``cancel``, ``jobs``, ``upload``.

Server and key come from ``--server`` / ``--api-key`` or the environment (``ADVREC_SERVER``,
``ADVREC_API_KEY``). Every verb rides out a gateway restart: calls are retried with backoff for
``--retry-for`` seconds (see :mod:`advrec.client`), and ``wait`` polls through outages. The local ``advrec report RUN`` belongs to the in-process runner; the
remote report download is ``advrec download ID -o report.html``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from advrec.client import DEFAULT_RETRY_FOR, AdvrecClient
from advrec.commands._columns import add_column_arguments, column_mappings
from advrec.pipeline.spec import read_spec_document
from advrec_common.errors import AdvrecError, InvalidInput, invalid

DEFAULT_SERVER = "http://127.0.0.1:8000"


def client_from_args(args: argparse.Namespace) -> AdvrecClient:
    """A client for --server/--api-key (or ADVREC_SERVER/ADVREC_API_KEY) that says once on stderr when it
    starts retrying through an outage (it retries until the gateway answers, or for --retry-for seconds)."""
    server = args.server or os.environ.get("ADVREC_SERVER") or DEFAULT_SERVER
    key = args.api_key or os.environ.get("ADVREC_API_KEY")
    retry_for = getattr(args, "retry_for", DEFAULT_RETRY_FOR)  # `report` has no --retry-for
    told: list[bool] = []

    def on_retry(why: str, _delay: float) -> None:
        if not told:
            told.append(True)
            limit = f"for up to {retry_for:g} s" if retry_for is not None else "until it answers (Ctrl-C to stop)"
            print(f"advrec: the gateway at {server} is unavailable ({why}); retrying {limit}", file=sys.stderr)

    return AdvrecClient(server, key, timeout=args.timeout, retry_for=retry_for, on_retry=on_retry)


def _spec_body(text: str) -> dict[str, Any]:
    # paths stay as written: the server reads them, relative to its datasets folder
    return read_spec_document(text, paths_from_file=False)


def _print_status(st: dict[str, Any]) -> None:
    p = st["progress"]
    print(f"job      {st['id']}")
    print(f"state    {st['state']}")
    print(f"progress {p['done']}/{p['total']} steps")
    if p["running"]:
        print(f"running  {', '.join(p['running'])}")
    if st.get("error"):
        print(f"error    {st['error'].splitlines()[0]}")
    for row in st.get("warnings") or []:
        print(f"warning  {row['loc']}: {row['msg']}")


def _print_warnings(rows: list[dict[str, str]]) -> None:
    for row in rows:
        print(f"advrec: warning: {row['loc']}: {row['msg']}", file=sys.stderr)


def _local_catalog_hint(spec_arg: str) -> str:
    """What to do when the spec's dataset paths name files on this machine (relative to the spec file's
    folder), which a stack cannot read; "" when they do not."""
    try:
        local = read_spec_document(spec_arg)
    except AdvrecError:
        return ""
    ds = local.get("dataset") if isinstance(local.get("dataset"), dict) else {}
    found = {flag: ds[f] for f, flag in (("images_dir", "--images"), ("interactions", "--interactions"),
                                         ("categories", "--categories"))
             if isinstance(ds.get(f), str) and Path(ds[f]).exists()}
    if not found:
        return ""
    flags = " ".join(f"{flag} {shlex.quote(path)}" for flag, path in found.items())
    return (f"the spec's dataset is on this machine, not on the server: upload it first with\n"
            f"  advrec upload {flags}\nand put the `dataset:` block it prints in the spec")


def _submit(args: argparse.Namespace) -> int:
    try:
        return _submit_spec(args)
    except InvalidInput as exc:
        hint = _local_catalog_hint(args.spec) if "does not exist" in str(exc) else ""
        if not hint:
            raise
        raise InvalidInput(f"{exc}\n{hint}", problems=exc.problems) from None


def _submit_spec(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        if args.validate:
            check = c.validate(_spec_body(args.spec))
            _print_warnings(check.get("warnings", []))
            counts = ", ".join(f"{k} {v}" for k, v in check.get("facts", {}).items())
            steps = f"{check['steps']} steps" if check.get("steps") is not None else ""
            detail = ", ".join(x for x in (counts, steps) if x)
            print(f"spec {check['name']!r} passes the gateway's admission" + (f" ({detail})" if detail else "")
                  + "; nothing was queued")
            if check.get("work"):
                from advrec.commands._work import format_work

                print(format_work(check["work"]))
            return 0
        job = c.submit_job(_spec_body(args.spec))
        job_id = job["id"]
        print(job_id, flush=True)  # first: an interrupted wait still leaves the id to resume with
        _print_warnings(job.get("warnings", []))
        if args.wait:
            return _wait_for(c, job_id, args)
    return 0


def _status(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        st = c.status(args.id)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        _print_status(st)
    return 0


def _wait_for(c: AdvrecClient, job_id: str, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from advrec.pipeline.work import format_seconds

    # in work units when the gateway reports them (steps differ a thousandfold: a step count predicts
    # nothing), as per mille of the plan's estimated work; the ETA is the gateway's (remaining work
    # priced per step kind by the finished steps), else "?"
    bar = tqdm(desc=job_id, total=1000, smoothing=0, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} "
                                                                "elapsed{postfix}")

    def progress(st: dict[str, Any]) -> None:
        p = st["progress"]
        work = p.get("work")
        fraction = work["fraction"] if work else p.get("fraction", 0.0)
        bar.n = min(1000, round(1000 * fraction))
        where = p["running"][0][-40:] if p["running"] else st["state"]
        eta = work.get("eta_seconds") if work else None
        eta_text = format_seconds(eta) if isinstance(eta, int | float) else "?"
        bar.set_postfix_str(f"ETA {eta_text}, {p['done']}/{p['total']} steps | {where}", refresh=False)
        bar.refresh()

    try:
        st = c.wait(job_id, progress=progress, poll_interval=args.poll, timeout=args.wait_timeout,
                    raise_on_failure=False)
    finally:
        bar.close()
    _print_status(st)
    return 0 if st["state"] == "done" else 1


def _wait(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        return _wait_for(c, args.id, args)


def _results(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        res = c.results(args.id)
    text = json.dumps(res, indent=1)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def _download(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        if args.artifact:
            Path(args.output).write_bytes(c.artifact(args.id, args.artifact))
        else:
            c.report(args.id, args.output)
    print(f"wrote {args.output}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        st = c.cancel(args.id)
    print(f"{st['id']} {st['state']}")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        rows = c.list_jobs(limit=args.limit)
    for r in rows:
        p = r["progress"]
        print(f"{r['id']:<50} {r['state']:<10} {p['done']:>4}/{p['total']:<4}")
    return 0


def _upload_files(args: argparse.Namespace) -> dict[str, Any]:
    """What ``advrec upload`` sends: a zip, or images + interactions (+ categories) from a folder's
    default names (``images/``, ``interactions.csv``, ``categories.csv``) or the file flags."""
    named = {"images": args.images, "interactions": args.interactions, "categories": args.categories}
    path = Path(args.path) if args.path is not None else None
    if path is not None and path.is_file():
        if given := [f"--{k}" for k, v in named.items() if v is not None]:
            raise InvalidInput(f"{path} is an archive: it holds the files, so {', '.join(given)} cannot be given")
        import zipfile

        if not zipfile.is_zipfile(path):
            raise InvalidInput(f"{path} is not a zip archive; upload a zip (images/ + interactions.csv inside) or a "
                               "folder, or name the files with --images DIR --interactions FILE")
        return {"path": path}
    folder = path
    if folder is not None and not folder.is_dir():
        raise InvalidInput(f"no such file or folder: {folder} (give a zip archive or a folder)")
    images = Path(args.images) if args.images is not None else (folder / "images" if folder else None)
    interactions = args.interactions or (folder / "interactions.csv" if folder else None)
    categories = args.categories or (folder / "categories.csv" if folder and (folder / "categories.csv").is_file()
                                     else None)
    problems = []
    if images is None or not images.is_dir():
        problems.append(("--images", f"no images folder {str(images)!r}" if images else "give PATH or --images DIR"))
    if interactions is None or not Path(interactions).is_file():
        problems.append(("--interactions", f"no interactions file {str(interactions)!r} (name yours with "
                                           f"--interactions FILE)" if interactions else "give PATH or --interactions FILE"))
    if categories is not None and not Path(categories).is_file():
        problems.append(("--categories", f"no categories file {str(categories)!r}"))
    if problems:
        raise invalid(problems, "nothing to upload")
    assert images is not None
    return {"images": sorted(f for f in images.iterdir() if f.is_file()), "interactions": interactions,
            "categories": categories}


def _upload(args: argparse.Namespace) -> int:
    columns, category_columns = column_mappings(args)
    files = _upload_files(args)
    with client_from_args(args) as c:
        info = c.upload_dataset(**files, columns=columns, category_columns=category_columns)
    _print_warnings(info.get("warnings", []))
    print(f"dataset {info['id']}: {info['n_images']} images, {info['n_interactions']} interactions")
    print("use in a spec:  dataset: " + json.dumps(info["spec"]))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help=f"gateway URL (env ADVREC_SERVER, default {DEFAULT_SERVER})")
    p.add_argument("--api-key", help="API key (env ADVREC_API_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout per request, seconds")
    p.add_argument("--retry-for", type=float, default=DEFAULT_RETRY_FOR,
                   help="retry a call at most this many seconds while the gateway is unreachable (502/503/504); "
                   "default: until it answers, as `wait` does (submits are repeated safely: one job)")


def _wait_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up after this many seconds")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit an evaluation to a gateway (prints the job id)")
    p.add_argument("spec", help="spec YAML/JSON file or preset name (demo, study)")
    p.add_argument("--wait", action="store_true", help="then wait with a progress bar")
    p.add_argument("--validate", action="store_true", help="only run the gateway's admission checks (every "
                   "problem at once, warnings, plan size); nothing is queued")
    _common(p)
    _wait_opts(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="state and progress of a remote job")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="print the full status document")
    _common(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("wait", help="wait for a remote job with a progress bar (exit 1 unless done)")
    p.add_argument("id")
    _common(p)
    _wait_opts(p)
    p.set_defaults(func=_wait)

    p = sub.add_parser("results", help="print (or save) results.json of a finished remote job")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    _common(p)
    p.set_defaults(func=_results)

    p = sub.add_parser("download", help="download report.html (or another report file) of a remote job")
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, help="destination file")
    p.add_argument("--artifact", help="a file of the report folder instead of report.html")
    _common(p)
    p.set_defaults(func=_download)

    p = sub.add_parser("cancel", help="cancel a remote job")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=_cancel)

    p = sub.add_parser("jobs", help="list the jobs of a gateway (this key's, newest first)")
    p.add_argument("--limit", type=int, default=50, help="how many (at most 500)")
    _common(p)
    p.set_defaults(func=_jobs)

    p = sub.add_parser("upload", help="upload a dataset (zip, or folder with images/ + interactions.csv)")
    p.add_argument("path", nargs="?", help="a .zip, or a folder holding images/, interactions.csv and optionally "
                                           "categories.csv (the flags below name other files)")
    p.add_argument("--images", help="the images folder (default PATH/images)")
    p.add_argument("--interactions", help="the interaction log (default PATH/interactions.csv)")
    p.add_argument("--categories", help="item -> category file (default PATH/categories.csv when present)")
    add_column_arguments(p)
    _common(p)
    p.set_defaults(func=_upload)
