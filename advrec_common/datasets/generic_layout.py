"""Bring-your-own catalog: a folder of ``<item_id>.<ext>`` images plus a delimited file of interactions.

Pipeline: read rows (:func:`read_interactions`; files as they come, see :mod:`.delimited`) ->
optional rating threshold -> drop items without an image (warned, with a count) -> drop repeated
(user, item) pairs (the earliest kept) -> k-core -> contiguous indices -> leave-one-out split.

The caller names the columns with :class:`InteractionColumns` (and :class:`CategoryColumns` for the
optional categories file); both are torch-free pydantic models a spec can embed. The same readers
back :func:`advrec_common.datasets.preflight.check_generic_dataset`, which lists every problem
instead of raising the first. No torch import here: the gateway's admission check uses this module.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from advrec_common.datasets.delimited import (
    Delimiter,
    Problem,
    Table,
    find_column,
    parse_number,
    parse_timestamp,
    read_table,
)
from advrec_common.datasets.kcore import kcore_filter
from advrec_common.datasets.split import build_index, leave_one_out
from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import InvalidInput, NotFound

GENERIC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_TIMESTAMP_COLUMN = "timestamp"
DEFAULT_RATING_COLUMN = "rating"


class DroppedRowsWarning(UserWarning):
    """Interactions were dropped while loading (e.g. items without an image)."""


class _Columns(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _names_not_blank(cls, value: object, info: ValidationInfo) -> object:
        # the delimiter may be a tab (blank to strip()); every other string is a column name
        if info.field_name != "delimiter" and isinstance(value, str) and not value.strip():
            raise ValueError("a column name cannot be blank")
        return value


class InteractionColumns(_Columns):
    """Which columns of the interactions file hold what (header names; whitespace and, when
    unambiguous, case are ignored).

    ``timestamp`` / ``rating``: None uses a column named ``timestamp`` / ``rating`` when the header
    has one (else file order / no ratings); a name makes that column required. ``min_rating`` drops
    rows rated below it (needs a rating column). ``delimiter``: None sniffs it among ``, ; \\t |``.
    """

    user: str = "user"
    item: str = "item"
    timestamp: str | None = None
    rating: str | None = None
    min_rating: float | None = None
    delimiter: Delimiter | None = None

    @field_validator("min_rating")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("min_rating must be a finite number")
        return value


class CategoryColumns(_Columns):
    """Which columns of the optional categories file hold the item id and its category label."""

    item: str = "item"
    category: str = "category"
    delimiter: Delimiter | None = None


# -- reading ----------------------------------------------------------------------------------------
@dataclass
class ParsedInteractions:
    """The readable rows of an interactions file, in file order: ids (stripped), optional rating and
    time (seconds since the epoch, see :func:`.delimited.parse_timestamp`) and each row's 1-based line."""

    path: Path
    lines: np.ndarray  # (R,) int64
    users: np.ndarray  # (R,) object (str)
    items: np.ndarray  # (R,) object (str)
    rating: np.ndarray | None  # (R,) float32
    time: np.ndarray | None  # (R,) int64 when every value is whole, else float64
    # without a time column: the columns whose values read as times (:func:`time_like_columns`), unmapped
    unmapped_time_columns: list[str] = field(default_factory=list)
    header_line: int = 1


# header names that say "time" (an export's purchased_at, order_date, event_time, created, ts)
TIME_NAME = re.compile(r"time|date|_at$|^ts$|_ts$|^ts_|when|created|updated|ordered|purchased|bought", re.IGNORECASE)
_PLAUSIBLE_TIMES = (631_152_000.0, 4_102_444_800.0)  # 1990-01-01 .. 2100-01-01 UTC: an interaction log's dates
TIME_SAMPLE = 200  # values of a column read to tell whether it holds times


def _reads_as_time(text: str) -> bool:
    try:
        seconds = parse_timestamp(text)
    except (ValueError, OverflowError):
        return False
    return _PLAUSIBLE_TIMES[0] <= seconds <= _PLAUSIBLE_TIMES[1]


def time_like_columns(table: Table, skip: Collection[int] = ()) -> list[str]:
    """Header names of the columns (other than ``skip``) whose first :data:`TIME_SAMPLE` non-empty values
    all read as dates or epoch times between 1990 and 2100 (so counts, prices and numeric ids do not),
    those whose name says time (:data:`TIME_NAME`) first."""
    found = []
    for i, name in enumerate(table.header):
        values = [v for _, fields in table.records[:TIME_SAMPLE] if (v := fields[i].strip())]
        if i not in skip and values and all(_reads_as_time(v) for v in values):
            found.append(name)
    return sorted(found, key=lambda n: not TIME_NAME.search(n))


FILE_ORDER_SPLIT = "test item = last row in file order (no timestamp column)"


def file_order_split_message(unmapped_time_columns: Sequence[str]) -> str:
    """What a catalog without a timestamp column means for its split, and what to do about it."""
    if unmapped_time_columns:
        names = ", ".join(repr(c) for c in unmapped_time_columns)
        fix = (f"column {names} holds times: name it (columns.timestamp; on the command line --timestamp-col)"
               if len(unmapped_time_columns) == 1 else
               f"columns {names} hold times: name one (columns.timestamp; on the command line --timestamp-col)")
    else:
        fix = "add a timestamp column, or sort the file by time"
    return (f"no timestamp column is mapped, so each user's held-out test item is the last row in file order, "
            f"which for an export not sorted by time is arbitrary; {fix}")


# the spec field and the `advrec upload` / `dataset inspect` flag that name each column
_COLUMN_SETTINGS = {
    ("columns", "user"): "--user-col", ("columns", "item"): "--item-col",
    ("columns", "rating"): "--rating-col", ("columns", "timestamp"): "--timestamp-col",
    ("category_columns", "item"): "--category-item-col", ("category_columns", "category"): "--category-col",
}


def _column(table: Table, role: str, name: str, required: bool, setting: str = "columns") -> int | None:
    found = find_column(table.header, name)
    if isinstance(found, int):
        return found
    if found is None:
        if required:
            flag = _COLUMN_SETTINGS[setting, role]
            table.problem(table.header_line, f"no {name!r} column for the {role} in the header {table.header}; "
                                             f"name the right one ({setting}.{role}; on the command line {flag})")
        return None
    table.problem(table.header_line, f"the {role} column {name!r} is ambiguous: {[table.header[i] for i in found]} "
                                     f"all match; rename one or name it exactly")
    return None


def read_interactions(
    path: str | Path, columns: InteractionColumns | None = None
) -> tuple[ParsedInteractions | None, list[Problem]]:
    """Read every readable row; rows with a problem (empty id, bad rating or time, wrong field count)
    are left out and listed. None when the file cannot be read as a table or lacks a needed column."""
    cols = columns or InteractionColumns()
    table = read_table(path, wanted=(cols.user, cols.item), delimiter=cols.delimiter)
    if isinstance(table, Problem):
        return None, [table]
    before = len(table.problems)
    ui = _column(table, "user", cols.user, required=True)
    ii = _column(table, "item", cols.item, required=True)
    ri = _column(table, "rating", cols.rating or DEFAULT_RATING_COLUMN, required=cols.rating is not None)
    ti = _column(table, "timestamp", cols.timestamp or DEFAULT_TIMESTAMP_COLUMN, required=cols.timestamp is not None)
    if cols.min_rating is not None and ri is None and cols.rating is None:
        table.problem(table.header_line, f"min_rating needs a rating column; there is no {DEFAULT_RATING_COLUMN!r} "
                                         f"column in the header {table.header} (name it: columns.rating)")
    if len(table.problems) > before:  # a header problem: the rows cannot be read as meant
        return None, table.problems

    lines, users, items, ratings, times = [], [], [], [], []
    for line, fields in table.records:
        user, item = fields[ui].strip(), fields[ii].strip()
        bad = [f"empty {role} (column {table.header[i]!r})" for role, i, v in (("user", ui, user), ("item", ii, item))
               if not v]
        rating = time = None
        if ri is not None:
            try:
                rating = parse_number(fields[ri], table.delimiter)
            except ValueError:
                bad.append(f"rating {fields[ri]!r} is not a number")
        if ti is not None:
            try:
                time = parse_timestamp(fields[ti])
            except ValueError:
                bad.append(f"timestamp {fields[ti]!r} is neither an epoch number nor an ISO 8601 date")
        if bad:
            table.problem(line, "; ".join(bad))
            continue
        lines.append(line)
        users.append(user)
        items.append(item)
        ratings.append(rating)
        times.append(time)
    time_arr = None
    if ti is not None:
        time_arr = np.asarray(times, dtype=np.float64)
        if np.all(time_arr == np.round(time_arr)):
            time_arr = time_arr.astype(np.int64)
    parsed = ParsedInteractions(
        path=table.path,
        lines=np.asarray(lines, dtype=np.int64),
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=object),
        rating=None if ri is None else np.asarray(ratings, dtype=np.float32),
        time=time_arr,
        unmapped_time_columns=time_like_columns(table, skip={ui, ii, ri}) if ti is None else [],
        header_line=table.header_line,
    )
    return parsed, _in_file_order(table.problems)


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def read_categories(
    path: str | Path, columns: CategoryColumns | None = None
) -> tuple[dict[str, str | None] | None, list[Problem]]:
    """item id -> category (None when the cell is empty). An item listed twice with different
    categories is a warning (the last one is used). None when the file is unusable."""
    cols = columns or CategoryColumns()
    table = read_table(path, wanted=(cols.item, cols.category), delimiter=cols.delimiter)
    if isinstance(table, Problem):
        return None, [table]
    ii = _column(table, "item", cols.item, required=True, setting="category_columns")
    ci = _column(table, "category", cols.category, required=True, setting="category_columns")
    if ii is None or ci is None:
        return None, table.problems
    out: dict[str, str | None] = {}
    seen_at: dict[str, int] = {}
    for line, fields in table.records:
        item, category = fields[ii].strip(), fields[ci].strip() or None
        if not item:
            table.problem(line, f"empty item (column {table.header[ii]!r}); row ignored", "warning")
            continue
        if item in out and out[item] != category:
            table.problem(line, f"item {item!r} already has category {out[item]!r} (line {seen_at[item]}); "
                                f"{category!r} is used", "warning")
        out[item], seen_at[item] = category, line
    return out, _in_file_order(table.problems)


def index_images(images_dir: str | Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Images of a folder by item id (file stem): ``(id -> path, id -> paths for ids with several files)``.

    For an id with several files (``A1.jpg`` and ``A1.png``) the first in sorted order is indexed;
    the caller decides whether that is an error (it is when the item is used).
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise NotFound(f"image folder {str(folder)!r} does not exist")
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in GENERIC_IMAGE_SUFFIXES and p.is_file():
            by_stem.setdefault(p.stem, []).append(p)
    return {s: ps[0] for s, ps in by_stem.items()}, {s: ps for s, ps in by_stem.items() if len(ps) > 1}


def duplicate_image_problem(images_dir: Path, item: str, paths: list[Path], used: bool) -> Problem:
    return Problem(
        severity="error" if used else "warning", file=str(images_dir),
        message=f"item {item!r} has several images ({', '.join(p.name for p in paths)}); keep one"
                + ("" if used else " (the item has no interactions)"),
    )


# -- selecting rows ---------------------------------------------------------------------------------
@dataclass
class Selection:
    """The rows of a :class:`ParsedInteractions` that the dataset keeps (``rows``, file order), and why others went."""

    rows: np.ndarray
    below_min_rating: int
    without_image: int  # rows (of rows not below min_rating)
    items_without_image: list[str]  # sorted ids
    repeats: int
    kcore_dropped: int
    repeated_rows: np.ndarray | None = None  # the rows dropped as repeats of an earlier (user, item) row


def select_interactions(
    parsed: ParsedInteractions, images: dict[str, Path], min_rating: float | None, kcore: int, iterative: bool = True
) -> Selection:
    """Rating threshold -> items with an image -> first of repeated (user, item) pairs -> k-core."""
    n = parsed.users.size
    keep = np.ones(n, dtype=bool)
    if min_rating is not None and parsed.rating is not None:
        keep &= parsed.rating >= min_rating
    below = int(n - keep.sum())
    has_image = np.fromiter((str(i) in images for i in parsed.items), dtype=bool, count=n)
    no_image = keep & ~has_image
    keep &= has_image

    # Repeated (user, item) pairs: keep the earliest, so an item never lands in train and test.
    rows = np.flatnonzero(keep)
    u_codes, _ = build_index(parsed.users[rows])
    i_codes, _ = build_index(parsed.items[rows])
    t = np.zeros(rows.size) if parsed.time is None else parsed.time[rows]
    order = np.lexsort((rows, t, i_codes, u_codes))
    pair = u_codes[order] * (int(i_codes.max(initial=0)) + 1) + i_codes[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    unique_rows = np.sort(rows[order[first]])

    u_codes, _ = build_index(parsed.users[unique_rows])
    i_codes, _ = build_index(parsed.items[unique_rows])
    kept = unique_rows[kcore_filter(u_codes, i_codes, kcore, iterative=iterative)]
    return Selection(
        rows=kept,
        below_min_rating=below,
        without_image=int(no_image.sum()),
        items_without_image=sorted({str(i) for i in parsed.items[no_image]}),
        repeats=int(rows.size - unique_rows.size),
        kcore_dropped=int(unique_rows.size - kept.size),
        repeated_rows=np.setdiff1d(rows, unique_rows),
    )


# -- loading ----------------------------------------------------------------------------------------
def raise_first(problems: list[Problem]) -> None:
    """Raise the first error of ``problems`` (NotFound for a missing file, else InvalidInput), counting the rest."""
    errors = [p for p in problems if p.severity == "error"]
    if not errors:
        return
    first = errors[0]
    more = f" (and {len(errors) - 1} more problem(s); the dataset check lists them all)" if len(errors) > 1 else ""
    if first.code == "not_found":
        raise NotFound(f"{first}{more}")
    raise InvalidInput(f"{first}{more}")


def _legacy_columns(
    user_col: str | None, item_col: str | None, rating_col: str | None, timestamp_col: str | None,
    min_rating: float | None,
) -> InteractionColumns | None:
    given = {k: v for k, v in (("user", user_col), ("item", item_col), ("min_rating", min_rating)) if v is not None}
    # the old keywords meant "used when present" for the default names: keep that
    if rating_col is not None and rating_col != DEFAULT_RATING_COLUMN:
        given["rating"] = rating_col
    if timestamp_col is not None and timestamp_col != DEFAULT_TIMESTAMP_COLUMN:
        given["timestamp"] = timestamp_col
    legacy = any(v is not None for v in (user_col, item_col, rating_col, timestamp_col, min_rating))
    return InteractionColumns(**given) if legacy else None


def load_generic_dataset(
    images_dir: str | Path,
    interactions_path: str | Path,
    categories_path: str | Path | None = None,
    *,
    columns: InteractionColumns | None = None,
    category_columns: CategoryColumns | None = None,
    kcore: int = 0,
    iterative_kcore: bool = True,
    name: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    min_rating: float | None = None,
) -> RecDataset:
    """Load a generic catalog (see the module docstring) and split it leave-one-out.

    ``columns`` names the interaction columns (default ``user``, ``item``, and ``rating`` /
    ``timestamp`` when present) and an optional ``min_rating``; ``category_columns`` those of the
    categories file (default ``item``, ``category``). The catalog holds the items left after
    k-core, sorted by id. Raises NotFound for a missing file or folder and InvalidInput naming
    ``file:line`` for the first problem (:func:`.preflight.check_generic_dataset` lists them all).
    ``user_col`` ... ``min_rating`` are the older spelling of ``columns`` (do not pass both).
    """
    legacy = _legacy_columns(user_col, item_col, rating_col, timestamp_col, min_rating)
    if legacy is not None and columns is not None:
        raise InvalidInput("pass columns= or the *_col / min_rating keywords, not both")
    cols = columns or legacy or InteractionColumns()
    images_dir = Path(images_dir)
    images, duplicates = index_images(images_dir)
    parsed, problems = read_interactions(interactions_path, cols)
    raise_first(problems)
    assert parsed is not None
    used = set(parsed.items.tolist())
    raise_first([duplicate_image_problem(images_dir, s, ps, True) for s, ps in duplicates.items() if s in used])

    sel = select_interactions(parsed, images, cols.min_rating, kcore, iterative_kcore)
    if sel.without_image:
        warnings.warn(
            f"dropped {sel.without_image} interaction(s) of {len(sel.items_without_image)} item(s) "
            f"without an image in {str(images_dir)!r}",
            DroppedRowsWarning,
            stacklevel=2,
        )
    rows = sel.rows
    if rows.size == 0:
        raise InvalidInput(f"{parsed.path}: no interactions left after filtering (images, min_rating, k-core)")

    user_codes, user_ids = build_index(parsed.users[rows])
    item_codes, item_ids = build_index(parsed.items[rows])
    inter = Interactions(
        user_codes,
        item_codes,
        len(user_ids),
        len(item_ids),
        rating=None if parsed.rating is None else parsed.rating[rows],
        timestamp=None if parsed.time is None else parsed.time[rows],
    )
    train, test = leave_one_out(inter)

    categories: list[str | None] | None = None
    category_names: list[str] = []
    if categories_path is not None:
        table, cat_problems = read_categories(categories_path, category_columns)
        raise_first(cat_problems)
        assert table is not None
        categories = [table.get(i) for i in item_ids]
        category_names = sorted({c for c in categories if c is not None})
    catalog = Catalog(
        item_ids=item_ids,
        image_paths=[images[i] for i in item_ids],
        categories=categories,
        category_names=category_names,
    )
    notes = [] if parsed.time is not None else [FILE_ORDER_SPLIT]
    return RecDataset(name or images_dir.parent.name or "generic", catalog, train, test, user_ids, notes=notes)
