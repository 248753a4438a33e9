"""The study's on-disk layout (VAR / TAaMR): numbered images plus a pre-split train/test pair.

::

    <root>/original/images/<i>.jpg      one image per item, i = 0..N-1 (.png accepted too)
    <root>/trainingset.tsv              user \\t item [\\t rating \\t timestamp], 0-based, no header
    <root>/testset.tsv                  same columns
    <root>/items.tsv      (optional)    header: item, item_id, category, <attribute columns>
    <root>/users.tsv      (optional)    header: user, user_id
    <root>/dataset.json   (optional)    {"name": ..., "category_names": [...]}

The optional files are advrec's additions (the study has none): they carry external ids,
metadata categories and the demo's generative attributes through a round trip.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from advrec_common.datasets.images import _catalog_image
from advrec_common.datasets.types import Catalog, Interactions, RecDataset
from advrec_common.errors import InvalidInput, NotFound

IMAGE_DIR = Path("original") / "images"
TRAIN_FILE = "trainingset.tsv"
TEST_FILE = "testset.tsv"
ITEMS_FILE = "items.tsv"
USERS_FILE = "users.tsv"
META_FILE = "dataset.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _read_interactions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Parse a study TSV into (user, item, rating | None, timestamp | None) arrays."""
    if not path.is_file():
        raise NotFound(f"missing interactions file {str(path)!r}")
    users: list[int] = []
    items: list[int] = []
    ratings: list[float] = []
    times: list[float] = []
    width: int | None = None
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) not in (2, 3, 4):
                raise InvalidInput(
                    f"{path}:{line_no}: expected 2 to 4 tab-separated columns, got {len(fields)}"
                )
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                raise InvalidInput(f"{path}:{line_no}: {len(fields)} columns, earlier rows have {width}")
            try:
                user, item = int(fields[0]), int(fields[1])
                rating = float(fields[2]) if width >= 3 else 1.0
                time = float(fields[3]) if width == 4 else 0.0
            except ValueError:
                raise InvalidInput(f"{path}:{line_no}: not numeric: {text!r}") from None
            if user < 0 or item < 0:
                raise InvalidInput(f"{path}:{line_no}: ids must be non-negative, got {text!r}")
            users.append(user)
            items.append(item)
            ratings.append(rating)
            times.append(time)
    rating_arr = np.asarray(ratings, dtype=np.float32) if width is not None and width >= 3 else None
    time_arr = None
    if width == 4:
        t = np.asarray(times, dtype=np.float64)
        time_arr = t.astype(np.int64) if np.all(t == np.round(t)) else t
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), rating_arr, time_arr


def _find_images(image_dir: Path) -> dict[int, Path]:
    """Numbered image files of ``image_dir``: {item index: path}."""
    if not image_dir.is_dir():
        raise NotFound(f"missing image folder {str(image_dir)!r}")
    found: dict[int, Path] = {}
    for path in image_dir.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit():
            index = int(path.stem)
            if index in found:
                raise InvalidInput(f"two images for item {index}: {found[index].name} and {path.name}")
            found[index] = path
    return found


def _read_table(path: Path, key: str) -> dict[int, dict[str, str]]:
    """An optional headed TSV keyed by its integer ``key`` column."""
    rows: dict[int, dict[str, str]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if reader.fieldnames is None or key not in reader.fieldnames:
            raise InvalidInput(f"{path}: the header must contain a {key!r} column")
        for line_no, row in enumerate(reader, start=2):
            try:
                rows[int(row[key])] = row
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"{path}:{line_no}: {key!r} must be an integer, got {row[key]!r}"
                ) from None
    return rows


def _parse_value(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def load_study_dataset(root: str | Path, name: str | None = None) -> RecDataset:
    """Load ``<root>`` in the study layout (see the module docstring) as a :class:`RecDataset`.

    Every item 0..N-1 (N = one more than the largest image number or referenced item) needs an
    image, else :class:`NotFound` naming the expected path; malformed rows raise
    :class:`InvalidInput` with file and line number.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"dataset folder {str(root)!r} does not exist")
    train_u, train_i, train_r, train_t = _read_interactions(root / TRAIN_FILE)
    test_u, test_i, test_r, test_t = _read_interactions(root / TEST_FILE)
    images = _find_images(root / IMAGE_DIR)
    all_i = np.concatenate([train_i, test_i])
    all_u = np.concatenate([train_u, test_u])
    n_items = max([*images.keys(), int(all_i.max()) if all_i.size else -1]) + 1
    n_users = int(all_u.max()) + 1 if all_u.size else 0
    missing = [i for i in range(n_items) if i not in images]
    if missing:
        raise NotFound(
            f"{len(missing)} item(s) have no image, e.g. {str(root / IMAGE_DIR / f'{missing[0]}.jpg')!r}"
        )

    meta = json.loads((root / META_FILE).read_text(encoding="utf-8")) if (root / META_FILE).is_file() else {}
    item_ids = [str(i) for i in range(n_items)]
    categories: list[str | None] | None = None
    attributes: list[dict] | None = None
    if (root / ITEMS_FILE).is_file():
        table = _read_table(root / ITEMS_FILE, "item")
        rows = [table.get(i, {}) for i in range(n_items)]
        item_ids = [row.get("item_id") or str(i) for i, row in enumerate(rows)]
        if any("category" in row for row in rows):
            categories = [row.get("category") or None for row in rows]
        extra = [c for c in next(iter(table.values()), {}) if c not in ("item", "item_id", "category")]
        if extra:
            attributes = [{c: _parse_value(row[c]) for c in extra if c in row} for row in rows]
            for attrs, category in zip(attributes, categories or [None] * n_items, strict=True):
                if category is not None:
                    attrs.setdefault("category", category)
    user_ids = [str(u) for u in range(n_users)]
    if (root / USERS_FILE).is_file():
        table = _read_table(root / USERS_FILE, "user")
        user_ids = [table.get(u, {}).get("user_id") or str(u) for u in range(n_users)]

    catalog = Catalog(
        item_ids=item_ids,
        image_paths=[images[i] for i in range(n_items)],
        categories=categories,
        category_names=list(meta.get("category_names", [])),
        attributes=attributes,
    )
    train = Interactions(train_u, train_i, n_users, n_items, rating=train_r, timestamp=train_t)
    test = Interactions(test_u, test_i, n_users, n_items, rating=test_r, timestamp=test_t)
    return RecDataset(name or meta.get("name") or root.name, catalog, train, test, user_ids)


def _write_interactions(inter: Interactions, path: Path) -> None:
    columns = [inter.user.astype(str), inter.item.astype(str)]
    if inter.rating is not None or inter.timestamp is not None:
        rating = np.ones(len(inter)) if inter.rating is None else np.asarray(inter.rating)
        time = (
            np.zeros(len(inter), dtype=np.int64) if inter.timestamp is None else np.asarray(inter.timestamp)
        )
        columns += [np.asarray([repr(float(r)) for r in rating]), time.astype(str)]
    lines = ["\t".join(row) for row in zip(*columns, strict=True)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_study_dataset(
    ds: RecDataset, root: str | Path, image_format: str = "jpg", quality: int = 95
) -> Path:
    """Write ``ds`` in the study layout under ``root`` and return it.

    ``image_format`` "jpg" (the study's; lossy, ``quality`` 1-95, no chroma subsampling) or "png"
    (lossless). Item/user ids, categories and attributes go to the optional side files.
    """
    if image_format not in ("jpg", "png"):
        raise InvalidInput(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    root = Path(root)
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    for i in range(len(ds.catalog)):
        image = Image.fromarray(_catalog_image(ds.catalog, i, None, max_pixels=2**62))
        if image_format == "jpg":
            image.save(image_dir / f"{i}.jpg", format="JPEG", quality=quality, subsampling=0)
        else:
            image.save(image_dir / f"{i}.png", format="PNG")
    _write_interactions(ds.train, root / TRAIN_FILE)
    _write_interactions(ds.test, root / TEST_FILE)

    catalog = ds.catalog
    attr_keys: list[str] = []
    for attrs in catalog.attributes or []:
        attr_keys += [k for k in attrs if k != "category" and k not in attr_keys]
    with (root / ITEMS_FILE).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["item", "item_id", "category", *attr_keys])
        for i, item_id in enumerate(catalog.item_ids):
            category = (
                "" if catalog.categories is None or catalog.categories[i] is None else catalog.categories[i]
            )
            attrs = catalog.attributes[i] if catalog.attributes is not None else {}
            writer.writerow([i, item_id, category, *(attrs.get(k, "") for k in attr_keys)])
    with (root / USERS_FILE).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["user", "user_id"])
        writer.writerows(enumerate(ds.user_ids))
    meta = {"name": ds.name, "category_names": list(catalog.category_names)}
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root
