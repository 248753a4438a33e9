"""Preflight check of a generic catalog: every problem at once, before anything heavy runs.

:func:`check_generic_dataset` reads the interactions and categories files with the loader's own
readers and selection (so its counts are what :func:`.generic_layout.load_generic_dataset` would
produce), and checks the images of the kept items from their headers (Pillow ``open`` +
``verify``: no pixel is decoded, nothing is kept in memory). It never raises for a problem in the
data: it returns them all, each with its file and 1-based line. Torch-free and fast (tens of
milliseconds for a 66-image catalog), for ``advrec run SPEC --validate`` and the gateway's admission.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from advrec_common.datasets.delimited import Problem
from advrec_common.datasets.generic_layout import (
    CategoryColumns,
    InteractionColumns,
    ParsedInteractions,
    Selection,
    duplicate_image_problem,
    file_order_split_message,
    index_images,
    read_categories,
    read_interactions,
    select_interactions,
)
from advrec_common.datasets.images import DEFAULT_MAX_PIXELS, IMAGE_SIZE_SPEC_PATH, read_image_header
from advrec_common.errors import BadImage, InvalidInput, NotFound

EXAMPLES = 5  # ids quoted in a problem that covers many items


class PreflightReport(BaseModel):
    """What :func:`check_generic_dataset` found: ``problems`` (errors and warnings, file order) and counts.

    The counts describe the dataset the loader would build: ``interactions`` / ``users`` / ``items``
    after the rating threshold, the image filter, repeated pairs and k-core; ``rows`` is every
    readable row of the interactions file. ``image_sizes`` (``"WxH"``) and ``image_modes`` count the
    checked images (those of the kept items, or of the whole folder when the interactions are unusable).
    """

    model_config = ConfigDict(extra="forbid")

    problems: list[Problem]
    rows: int = 0
    interactions: int = 0
    users: int = 0
    items: int = 0
    images: int = 0
    rows_below_min_rating: int = 0
    rows_without_image: int = 0
    items_without_image: int = 0
    repeated_pairs: int = 0
    kcore_dropped: int = 0
    image_sizes: dict[str, int] = {}
    image_modes: dict[str, int] = {}
    categories: int = 0
    items_without_category: int = 0
    items_per_category: dict[str, int] = {}  # kept items per label, most first (with a categories file)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when loading would succeed (warnings allowed)."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """InvalidInput listing every error, one ``file:line: message`` per line; nothing when :attr:`ok`."""
        if self.errors:
            raise InvalidInput(f"{len(self.errors)} problem(s) in the dataset:\n"
                               + "\n".join(f"  {p}" for p in self.errors))

    def __str__(self) -> str:
        lines = [f"{self.interactions} interactions of {self.users} users and {self.items} items "
                 f"({self.rows} rows read, {self.images} image files)"]
        if self.image_sizes:
            lines.append("image sizes: " + ", ".join(f"{k} ({v})" for k, v in self.image_sizes.items())
                         + "; modes: " + ", ".join(f"{k} ({v})" for k, v in self.image_modes.items()))
        lines += [f"{p.severity}: {p}" for p in self.problems]
        return "\n".join(lines)


def _examples(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:EXAMPLES])
    return shown + (f" and {len(ids) - EXAMPLES} more" if len(ids) > EXAMPLES else "")


def _by_count(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _image_problems(
    images_dir: Path, items: list[str], images: dict[str, Path], max_pixels: int, require_uniform_size: bool,
    report: PreflightReport,
) -> list[Problem]:
    problems: list[Problem] = []
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for item in items:
        path = images[item]
        try:
            header = read_image_header(path, max_pixels=max_pixels)
        except BadImage as exc:
            problems.append(Problem(file=str(path), message=str(exc).replace(f"image file {str(path)!r}", "image")))
            continue
        sizes[f"{header.width}x{header.height}"] += 1
        modes[header.mode] += 1
    report.image_sizes = _by_count(sizes)
    report.image_modes = _by_count(modes)
    if require_uniform_size and len(sizes) > 1:
        problems.append(Problem(
            file=str(images_dir),
            message=f"images differ in size ({', '.join(f'{k}: {v}' for k, v in report.image_sizes.items())}); set "
                    f"{IMAGE_SIZE_SPEC_PATH} in the spec to load every image at one square size",
        ))
    return problems


def _no_images(images_dir: Path) -> str:
    """Why a folder that exists gives no images: what it holds instead."""
    entries = sorted(images_dir.iterdir())
    folders = [p.name for p in entries if p.is_dir()]
    wanted = "<item id>.<jpg|jpeg|png|webp>"
    if folders:
        return (f"no image {wanted} in this folder; it holds {len(folders)} folder(s) ({_examples(folders)}), and "
                f"images in subfolders are not read: point images_dir at the folder that holds the images")
    others = [p.name for p in entries if p.is_file()]
    if others:
        return f"no image {wanted} in this folder; its {len(others)} file(s) have other names: {_examples(others)}"
    return f"the folder is empty; it should hold one image {wanted} per item"


def _selection_problems(
    images_dir: Path, parsed: ParsedInteractions, sel: Selection, images: dict[str, Path], kcore: int
) -> list[Problem]:
    problems: list[Problem] = []
    if not images:  # no image at all: the images folder's own problem is the one cause
        return problems
    if sel.items_without_image:
        folded = {s.casefold(): s for s in images}
        near = [f"{i!r} ~ {folded[i.casefold()]!r}" for i in sel.items_without_image if i.casefold() in folded]
        hint = f"; some differ from an image name only in case: {', '.join(near[:EXAMPLES])}" if near else ""
        first_line = {}
        for line, item in zip(parsed.lines.tolist(), parsed.items.tolist(), strict=True):
            first_line.setdefault(item, line)
        missing = sel.items_without_image
        problems.append(Problem(
            severity="warning", file=str(parsed.path), line=first_line.get(missing[0]),
            message=f"{len(missing)} item(s) of {sel.without_image} interaction(s) have no image "
                    f"<item id>.<jpg|jpeg|png|webp> in {str(images_dir)!r} and will be dropped: "
                    f"{_examples(missing)}{hint}",
        ))
    if sel.repeats and sel.repeated_rows is not None:
        lines = parsed.lines[sel.repeated_rows]
        pairs = [f"{u!r}/{i!r}" for u, i in zip(parsed.users[sel.repeated_rows[:EXAMPLES]],
                                                 parsed.items[sel.repeated_rows[:EXAMPLES]], strict=True)]
        problems.append(Problem(
            severity="warning", file=str(parsed.path), line=int(lines.min()),
            message=f"{sel.repeats} row(s) repeat an earlier (user, item) pair and will be dropped (each pair counts "
                    f"once, its earliest row): {', '.join(pairs)}{' ...' if sel.repeats > EXAMPLES else ''}",
        ))
    if sel.rows.size == 0:
        why = (f"{sel.below_min_rating} below min_rating, {sel.without_image} without an image, "
               f"{sel.repeats} repeated pairs, {sel.kcore_dropped} removed by the {kcore}-core")
        hint = ""
        if parsed.items.size and sel.without_image and len(sel.items_without_image) == len(set(parsed.items.tolist())):
            hint = (f"; no item id matches an image name: ids look like {_examples(sorted(set(parsed.items.tolist())))}, "
                    f"images like {_examples(sorted(images))}")
        problems.append(Problem(file=str(parsed.path), message=f"no interactions left after filtering ({why}){hint}"))
    return problems


def check_generic_dataset(
    images_dir: str | Path,
    interactions: str | Path,
    categories: str | Path | None = None,
    columns: InteractionColumns | None = None,
    category_columns: CategoryColumns | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    kcore: int = 0,
    iterative_kcore: bool = True,
    require_uniform_size: bool = False,
    max_problems: int = 200,
) -> PreflightReport:
    """Check a generic catalog without loading it; every problem found, never raised.

    Checks: the files and folder exist; the interactions file decodes (UTF-8), splits on a
    delimiter, has the named columns and readable rows (ids, ratings, timestamps; each bad row
    listed with its line); items have an image, and no item has two (``A1.jpg`` + ``A1.png``);
    rows survive the filters (``min_rating`` from ``columns``, ``kcore``); each kept item's image
    opens, verifies and has at most ``max_pixels`` pixels (from the header); with
    ``require_uniform_size`` (an extractor without ``image_size``) all images share one size; the
    categories file reads like the interactions and covers the kept items (a warning otherwise).
    At most ``max_problems`` problems are listed, then one line counts the rest.
    """
    t0 = time.perf_counter()
    images_dir = Path(images_dir)
    report = PreflightReport(problems=[])
    problems: list[Problem] = []
    try:
        images, duplicates = index_images(images_dir)
    except NotFound:
        images, duplicates = {}, {}
        problems.append(Problem(file=str(images_dir), code="not_found", message="image folder does not exist"))
    else:
        if not images:
            problems.append(Problem(file=str(images_dir), message=_no_images(images_dir)))
    report.images = len(images) + sum(len(ps) - 1 for ps in duplicates.values())

    parsed, read_problems = read_interactions(interactions, columns)
    problems += read_problems
    kept_items: list[str] = sorted(images)  # checked when the interactions are unusable
    if parsed is not None:
        used = set(parsed.items.tolist())
        problems += [duplicate_image_problem(images_dir, s, ps, s in used) for s, ps in sorted(duplicates.items())]
        sel = select_interactions(parsed, images, (columns or InteractionColumns()).min_rating, kcore, iterative_kcore)
        problems += _selection_problems(images_dir, parsed, sel, images, kcore)
        if parsed.time is None and sel.rows.size:
            problems.append(Problem(severity="warning", file=str(parsed.path), line=parsed.header_line,
                                    message=file_order_split_message(parsed.unmapped_time_columns)))
        kept_items = sorted(set(parsed.items[sel.rows].tolist()))
        report.rows = int(parsed.users.size)
        report.interactions = int(sel.rows.size)
        report.users = len(set(parsed.users[sel.rows].tolist()))
        report.items = len(kept_items)
        report.rows_below_min_rating = sel.below_min_rating
        report.rows_without_image = sel.without_image
        report.items_without_image = len(sel.items_without_image)
        report.repeated_pairs = sel.repeats
        report.kcore_dropped = sel.kcore_dropped
    problems += _image_problems(images_dir, kept_items, images, max_pixels, require_uniform_size, report)

    if categories is not None:
        table, cat_problems = read_categories(categories, category_columns)
        problems += cat_problems
        if table is not None:
            report.categories = len({c for c in table.values() if c is not None})
            if parsed is not None:
                uncovered = [i for i in kept_items if table.get(i) is None]
                report.items_without_category = len(uncovered)
                report.items_per_category = _by_count(Counter(c for i in kept_items if (c := table.get(i))))
                if uncovered:
                    problems.append(Problem(severity="warning", file=str(categories),
                                            message=f"{len(uncovered)} item(s) have no category: {_examples(uncovered)}"))
                kept = set(kept_items)
                strangers = sorted(i for i in table if i not in kept)
                if strangers:  # often ids spelt differently in the two files
                    problems.append(Problem(severity="warning", file=str(categories), message=(
                        f"{len(strangers)} labelled item(s) are not in the catalog (no image, or no kept "
                        f"interaction), their labels are unused: {_examples(strangers)}")))

    if len(problems) > max_problems:
        rest = problems[max_problems:]
        n_err = sum(p.severity == "error" for p in rest)
        problems = problems[:max_problems] + [Problem(
            severity="error" if n_err else "warning", file=str(interactions),
            message=f"{len(rest)} more problem(s) not listed ({n_err} errors)",
        )]
    report.problems = problems
    report.seconds = time.perf_counter() - t0
    return report
