"""Command-line flags that name the columns of an interactions file and a categories file.

One definition for ``advrec upload`` (sent to the gateway) and ``advrec dataset inspect`` (read
here), matching a spec's ``dataset.columns`` / ``dataset.category_columns``.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--user-col`` ... ``--category-col`` group to ``parser``."""
    cols = parser.add_argument_group("columns, when the files do not use the default names (user, item[, timestamp, "
                                     "rating]; item, category)")
    cols.add_argument("--user-col", help="interactions: the user column")
    cols.add_argument("--item-col", help="interactions: the item column")
    cols.add_argument("--timestamp-col", help="interactions: the timestamp column (ISO 8601 or epoch)")
    cols.add_argument("--rating-col", help="interactions: the rating column")
    cols.add_argument("--min-rating", type=float, help="drop rows rated below this")
    cols.add_argument("--delimiter", choices=[",", ";", "tab", "|"], help="default: sniffed")
    cols.add_argument("--category-item-col", help="categories: the item column")
    cols.add_argument("--category-col", help="categories: the category label column")


def column_mappings(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(interaction columns, category columns) named on the command line; None where nothing was named."""
    columns = {k: v for k, v in (("user", args.user_col), ("item", args.item_col), ("timestamp", args.timestamp_col),
                                 ("rating", args.rating_col), ("min_rating", args.min_rating),
                                 ("delimiter", "\t" if args.delimiter == "tab" else args.delimiter))
               if v is not None}
    cats = {k: v for k, v in (("item", args.category_item_col), ("category", args.category_col)) if v is not None}
    return columns or None, cats or None
