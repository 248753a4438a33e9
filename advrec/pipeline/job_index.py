"""The job index: what a job list and the schedulers read instead of every run record ever written.

Beside the records, ``<runs_dir>.index/by-owner/<owner>/<created>-<run_id>.json`` (``<home>/runs.index``:
the runs folder holds runs only) keeps each run's summary (state, progress, name: a few hundred bytes),
rewritten with the record, so listing one key's jobs, newest first, one page at a time, reads that key's
folder names and one small file per row; and ``<runs_dir>.index/active/<run_id>`` (its owner inside) marks
every unfinished run, so the admission quota, the dispatcher and the reconciler visit the runs that can
still change, not all of them.

Records are the database; the index is derived from them. A home written before the index existed
is indexed once, on its first listing (:func:`ensure`). This module only files what it is given:
:mod:`advrec.pipeline.record` writes the rows and is the way in.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advrec_common.store import atomic_write

BY_OWNER = "by-owner"
ACTIVE = "active"
COMPLETE = ".complete"  # written once every record of the home is indexed


def index_dir(runs_dir: str | Path) -> Path:
    """Where the index of ``runs_dir`` lives: beside it (``<home>/runs.index``)."""
    runs_dir = Path(runs_dir)
    return runs_dir.with_name(runs_dir.name + ".index")
NO_OWNER = "_"
TERMINAL = {"done", "failed", "cancelled"}


Summarize = Callable[[dict[str, Any]], dict[str, Any]]  # a record -> its row (record.summary)


def _owner_dir(runs_dir: Path, owner: str | None) -> Path:
    return index_dir(runs_dir) / BY_OWNER / (owner or NO_OWNER)


def entry_name(created: float, run_id: str) -> str:
    """Sorts by creation time (fixed-width seconds), then run id."""
    return f"{created:017.6f}-{run_id}.json"


def write(runs_dir: str | Path, rec: dict[str, Any], row: dict[str, Any]) -> None:
    """Index ``rec`` with its list row ``row`` (called with every write of a record)."""
    runs_dir = Path(runs_dir)
    folder = _owner_dir(runs_dir, rec.get("owner"))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / entry_name(float(rec["created"]), rec["run_id"]), json.dumps(row))
    marker = index_dir(runs_dir) / ACTIVE / rec["run_id"]
    if rec["state"] in TERMINAL:
        marker.unlink(missing_ok=True)
    elif not marker.is_file():
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, rec.get("owner") or NO_OWNER)


def ensure(runs_dir: str | Path, summarize: Summarize) -> None:
    """Index every record of a home written before the index existed (once; under a lock)."""
    runs_dir = Path(runs_dir)
    index = index_dir(runs_dir)
    if (index / COMPLETE).is_file() or not runs_dir.is_dir():
        return
    index.mkdir(parents=True, exist_ok=True)
    with open(index / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if (index / COMPLETE).is_file():
                return
            for d in runs_dir.iterdir():
                path = d / "record.json"
                if d.name.startswith(".") or not path.is_file():
                    continue
                try:
                    rec = json.loads(path.read_text())
                    write(runs_dir, rec, summarize(rec))
                except (ValueError, KeyError, OSError):  # a broken record stays out of the lists
                    continue
            atomic_write(index / COMPLETE, "1")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# folder -> (its mtime_ns, when listed, its row files newest first); row file -> (its identity, the row)
_LISTINGS: dict[Path, tuple[int, float, list[str]]] = {}
_ROWS: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}
_CACHE_ROWS = 50_000
LISTING_FRESH_S = 1.0  # a folder's mtime ticks coarsely: a listing is also redone after this long


def _listing(folder: Path) -> list[str]:
    """The row files of ``folder``, newest first (cached until the folder changes, at most a second)."""
    try:
        mtime = folder.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    now = time.monotonic()
    cached = _LISTINGS.get(folder)
    if cached is None or cached[0] != mtime or now - cached[1] > LISTING_FRESH_S:
        cached = (mtime, now, sorted((n for n in os.listdir(folder) if n.endswith(".json")), reverse=True))
        _LISTINGS[folder] = cached
    return cached[2]


def _row(path: Path) -> dict[str, Any]:
    """A row file's content, cached until it is rewritten (every rewrite is a new file: atomic_write), so a
    page costs a stat per row, not a parse."""
    st = path.stat()
    ident = (st.st_mtime_ns, st.st_ino, st.st_size)
    cached = _ROWS.get(path)
    if cached is None or cached[0] != ident:
        if len(_ROWS) >= _CACHE_ROWS:
            _ROWS.clear()
        cached = (ident, json.loads(path.read_text()))
        _ROWS[path] = cached
    return dict(cached[1])


def page(runs_dir: str | Path, owner: str | None, limit: int, before: str | None = None,
         all_owners: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` job summaries of ``owner`` (every owner's with ``all_owners``), newest first, older
    than job ``before`` when given; and the id to pass as ``before`` for the next page (None at the end).
    A page reads its own rows only (folder listings and rows are cached until they change)."""
    runs_dir = Path(runs_dir)
    root = index_dir(runs_dir) / BY_OWNER
    folders = [p for p in root.iterdir() if p.is_dir()] if all_owners and root.is_dir() else \
        [_owner_dir(runs_dir, owner)]
    names: list[tuple[str, Path]] = [(n, folder) for folder in folders for n in _listing(folder)]
    if len(folders) > 1:
        names.sort(key=lambda nf: nf[0], reverse=True)
    if before is not None:
        cut = next((i for i, (n, _) in enumerate(names) if _run_id(n) == before), None)
        names = names[cut + 1:] if cut is not None else []
    rows: list[dict[str, Any]] = []
    i = 0
    while i < len(names) and len(rows) < limit:
        n, folder = names[i]
        i += 1
        try:
            rows.append(_row(folder / n))
        except (FileNotFoundError, ValueError):  # rewritten this instant: the record is the truth
            continue
    return rows, (rows[-1]["run_id"] if rows and i < len(names) else None)


def _run_id(name: str) -> str:
    return name[18:-5]  # "<17-character created>-<run_id>.json"


def active(runs_dir: str | Path, owner: str | None = None) -> list[str]:
    """Ids of the unfinished runs (of ``owner`` when given)."""
    folder = index_dir(runs_dir) / ACTIVE
    try:
        ids = os.listdir(folder)
    except FileNotFoundError:
        return []
    if owner is None:
        return sorted(ids)
    out = []
    for run_id in ids:
        try:
            if (folder / run_id).read_text() == owner:
                out.append(run_id)
        except FileNotFoundError:
            continue
    return sorted(out)


def remove(runs_dir: str | Path, rec: dict[str, Any]) -> None:
    """Forget a deleted run."""
    runs_dir = Path(runs_dir)
    (_owner_dir(runs_dir, rec.get("owner")) / entry_name(float(rec["created"]), rec["run_id"])).unlink(missing_ok=True)
    (index_dir(runs_dir) / ACTIVE / rec["run_id"]).unlink(missing_ok=True)
