"""Bring-your-own catalog: a folder of ``<item_id>.<ext>`` images plus a CSV/TSV of interactions.

Pipeline: read rows -> optional rating threshold -> drop items without an image (warned, with a
count) -> drop repeated (user, item) pairs (the earliest kept) -> k-core -> contiguous indices ->
leave-one-out split.
"""

from __future__ import annotations

import csv
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

from advrec_common.datasets.kcore import kcore_filter
from advrec_common.datasets.split import build_index, leave_one_out
from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import InvalidInput, NotFound

GENERIC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class DroppedRowsWarning(UserWarning):
    """Interactions were dropped while loading (e.g. items without an image)."""


def _delimiter(path: Path, first_line: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(first_line, delimiters=",\t;").delimiter
    except csv.Error:
        raise InvalidInput(f"{path}: cannot tell the delimiter; name the file .csv or .tsv") from None


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise NotFound(f"missing interactions file {str(path)!r}")
    with path.open(encoding="utf-8", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        reader = csv.DictReader(fh, delimiter=_delimiter(path, first))
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _parse_time(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidInput(f"{where}: timestamp {text!r} is neither a number nor an ISO date") from None


def _column(rows: list[dict[str, str]], name: str, path: Path, parse, what: str) -> np.ndarray:
    values = []
    for line_no, row in enumerate(rows, start=2):
        text = row.get(name)
        if text is None or text.strip() == "":
            raise InvalidInput(f"{path}:{line_no}: empty {what} {name!r}")
        try:
            values.append(parse(text.strip(), f"{path}:{line_no}"))
        except ValueError:
            raise InvalidInput(f"{path}:{line_no}: {what} {text!r} is not a number") from None
    return np.asarray(values)


def _read_categories(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise NotFound(f"missing categories file {str(path)!r}")
    header, rows = _read_rows(path)
    if "item" not in header or "category" not in header:
        raise InvalidInput(f"{path}: the header must contain 'item' and 'category' columns, got {header}")
    return {row["item"].strip(): (row["category"] or "").strip() for row in rows if row.get("item")}


def load_generic_dataset(
    images_dir: str | Path,
    interactions_path: str | Path,
    categories_path: str | Path | None = None,
    *,
    kcore: int = 0,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str = "rating",
    timestamp_col: str = "timestamp",
    min_rating: float | None = None,
    iterative_kcore: bool = True,
    name: str | None = None,
) -> RecDataset:
    """Load a generic catalog (see the module docstring) and split it leave-one-out.

    The interactions file needs a header naming ``user_col`` and ``item_col``; ``rating_col`` and
    ``timestamp_col`` are used when present (timestamps: numbers or ISO dates). Rows with a rating
    below ``min_rating`` are dropped. The catalog holds the items left after k-core, sorted by id.
    """
    images_dir, interactions_path = Path(images_dir), Path(interactions_path)
    if not images_dir.is_dir():
        raise NotFound(f"image folder {str(images_dir)!r} does not exist")
    header, rows = _read_rows(interactions_path)
    for col in (user_col, item_col):
        if col not in header:
            raise InvalidInput(f"{interactions_path}: no {col!r} column in the header {header}")
    if min_rating is not None and rating_col not in header:
        raise InvalidInput(f"min_rating needs a {rating_col!r} column; the header is {header}")

    users = np.asarray([(r.get(user_col) or "").strip() for r in rows], dtype=object)
    items = np.asarray([(r.get(item_col) or "").strip() for r in rows], dtype=object)
    for label, col, values in (("user", user_col, users), ("item", item_col, items)):
        empty = np.flatnonzero(values == "")
        if empty.size:
            raise InvalidInput(f"{interactions_path}:{empty[0] + 2}: empty {label} column {col!r}")
    rating = (
        _column(rows, rating_col, interactions_path, lambda t, _w: float(t), "rating").astype(np.float32)
        if rating_col in header
        else None
    )
    time = (
        _column(rows, timestamp_col, interactions_path, _parse_time, "timestamp")
        if timestamp_col in header
        else None
    )
    if time is not None and np.all(time == np.round(time)):
        time = time.astype(np.int64)

    keep = np.ones(len(rows), dtype=bool)
    if min_rating is not None:
        assert rating is not None
        keep &= rating >= min_rating
    images = {
        p.stem: p
        for p in sorted(images_dir.iterdir())
        if p.suffix.lower() in GENERIC_IMAGE_SUFFIXES and p.is_file()
    }
    has_image = np.asarray([str(i) in images for i in items], dtype=bool)
    no_image = keep & ~has_image
    if no_image.any():
        warnings.warn(
            f"dropped {int(no_image.sum())} interaction(s) of {len(set(items[no_image]))} item(s) "
            f"without an image in {str(images_dir)!r}",
            DroppedRowsWarning,
            stacklevel=2,
        )
    keep &= has_image

    # Repeated (user, item) pairs: keep the earliest, so an item never lands in train and test.
    rows_kept = np.flatnonzero(keep)
    u_codes, _ = build_index(users[rows_kept])
    i_codes, _ = build_index(items[rows_kept])
    t_kept = np.zeros(rows_kept.size) if time is None else time[rows_kept]
    order = np.lexsort((rows_kept, t_kept, i_codes, u_codes))
    pair = u_codes[order] * (int(i_codes.max(initial=0)) + 1) + i_codes[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    rows_kept = np.sort(rows_kept[order[first]])

    u_codes, _ = build_index(users[rows_kept])
    i_codes, _ = build_index(items[rows_kept])
    rows_kept = rows_kept[kcore_filter(u_codes, i_codes, kcore, iterative=iterative_kcore)]
    if rows_kept.size == 0:
        raise InvalidInput("no interactions left after filtering (images, min_rating, k-core)")

    user_codes, user_ids = build_index(users[rows_kept])
    item_codes, item_ids = build_index(items[rows_kept])
    inter = Interactions(
        user_codes,
        item_codes,
        len(user_ids),
        len(item_ids),
        rating=None if rating is None else rating[rows_kept],
        timestamp=None if time is None else time[rows_kept],
    )
    train, test = leave_one_out(inter)

    categories: list[str | None] | None = None
    category_names: list[str] = []
    if categories_path is not None:
        table = _read_categories(Path(categories_path))
        categories = [table.get(i) or None for i in item_ids]
        category_names = sorted({c for c in categories if c is not None})
    catalog = Catalog(
        item_ids=item_ids,
        image_paths=[images[i] for i in item_ids],
        categories=categories,
        category_names=category_names,
    )
    return RecDataset(name or images_dir.parent.name or "generic", catalog, train, test, user_ids)
