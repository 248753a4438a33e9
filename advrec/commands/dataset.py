"""``advrec dataset``: write the demo dataset in the study layout, or inspect a dataset folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from advrec.commands._columns import add_column_arguments, column_mappings
from advrec_common.datasets.demo import DemoConfig, make_demo_dataset
from advrec_common.datasets.types import RecDataset
from advrec_common.errors import InvalidInput


def format_summary(ds: RecDataset) -> str:
    """Human-readable counts of a dataset (one fact per line)."""
    s = ds.summary()
    lines = [
        f"dataset  {s['name']}",
        f"users    {s['users']}",
        f"items    {s['items']}",
        f"train    {s['train']}",
        f"test     {s['test']}",
        f"density  {s['density']:.4%}",
    ]
    if s["items_per_category"]:
        lines.append("items per category:")
        width = max(len(name) for name in s["items_per_category"])
        lines += [f"  {name:<{width}}  {count}" for name, count in s["items_per_category"].items()]
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    config = DemoConfig(
        n_items=args.items,
        n_users=args.users,
        image_size=args.size,
        interactions_per_user=(args.min_per_user, args.max_per_user),
        seed=args.seed,
    )
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"output folder {str(out)!r} is not empty")
    from advrec_common.datasets.study_layout import write_study_dataset

    ds = make_demo_dataset(config)
    write_study_dataset(ds, out, image_format=args.format)
    print(format_summary(ds))
    print(f"written to {out} (study layout, {args.format} images)")
    return 0


def _load_study(args: argparse.Namespace) -> RecDataset:
    from advrec_common.datasets.study_layout import load_study_dataset  # imported on use: pulls in torch

    return load_study_dataset(args.path)


def _load_generic(args: argparse.Namespace) -> RecDataset:
    from advrec_common.datasets.generic_layout import (
        CategoryColumns,
        InteractionColumns,
        load_generic_dataset,
    )
    from advrec_common.validation import validate_model

    columns, category_columns = column_mappings(args)
    return load_generic_dataset(
        args.path,
        _required(args.interactions, "--interactions"),
        args.categories,
        kcore=args.kcore,
        columns=validate_model(InteractionColumns, columns or {}, root="--*-col", what="invalid column flags"),
        category_columns=validate_model(CategoryColumns, category_columns or {}, root="--category-*-col",
                                        what="invalid column flags"),
    )


LOADERS = {"study": _load_study, "generic": _load_generic}


def _required(value: str | None, flag: str) -> str:
    if value is None:
        raise InvalidInput(f"--layout generic needs {flag}")
    return value


def _inspect(args: argparse.Namespace) -> int:
    layout = args.layout or ("generic" if args.interactions is not None else "study")
    if layout == "study" and not (Path(args.path) / "trainingset.tsv").exists() and Path(args.path).is_dir():
        raise InvalidInput(f"{args.path!r} is not in the study layout (no trainingset.tsv); for a folder of images "
                           f"and an interaction log, pass --interactions FILE (and the images folder as the path)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # the loaders warn about dropped rows
        ds = LOADERS[layout](args)
    for w in caught:
        print(f"advrec: warning: {w.message}", file=sys.stderr)
    print(format_summary(ds))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help="write the demo dataset or inspect a dataset folder")
    verbs = parser.add_subparsers(dest="dataset_command", metavar="VERB", required=True)

    demo = verbs.add_parser("demo", help="write the procedurally generated demo in the study layout")
    demo.add_argument("--out", required=True, help="output folder (new or empty)")
    demo.add_argument("--items", type=int, default=DemoConfig.n_items)
    demo.add_argument("--users", type=int, default=DemoConfig.n_users)
    demo.add_argument("--size", type=int, default=DemoConfig.image_size, help="image side in pixels")
    demo.add_argument("--seed", type=int, default=DemoConfig.seed)
    demo.add_argument("--min-per-user", type=int, default=DemoConfig.interactions_per_user[0])
    demo.add_argument("--max-per-user", type=int, default=DemoConfig.interactions_per_user[1])
    demo.add_argument(
        "--format", choices=["jpg", "png"], default="jpg", help="jpg (the study's) or lossless png"
    )
    demo.set_defaults(func=_demo)

    inspect = verbs.add_parser("inspect", help="load a dataset folder and print its summary")
    inspect.add_argument("path", help="study layout: the dataset root; generic layout: the images folder")
    inspect.add_argument("--layout", choices=sorted(LOADERS), default=None,
                         help="default: generic when --interactions is given, else study")
    inspect.add_argument("--interactions", help="generic: the interaction log (delimited, with a header)")
    inspect.add_argument("--categories", help="generic: item -> category file (delimited, with a header)")
    inspect.add_argument("--kcore", type=int, default=0, help="generic: k-core threshold (0 = none)")
    add_column_arguments(inspect)
    inspect.set_defaults(func=_inspect)
