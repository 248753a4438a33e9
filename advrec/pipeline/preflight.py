"""Every check that can run before compute, at once: ``advrec run SPEC --validate`` and the gateway's
admission call :func:`preflight` before anything is planned or queued.

It parses the spec (every field problem with its spec path), then checks what the spec points at
without loading models or pixels: the catalog files (:func:`advrec_common.datasets.preflight.
check_generic_dataset`: every row and image header), the catalog size against ``ks``, the categories
the study will use (catalog labels, or the extractors' classes when those are known without torch:
named weights, demo extractors) against the scenario's origin and target, labels for extractors
trained on the catalog, checkpoints and named weights on disk, fields that the chosen source or
dataset kind ignores, and the device. Torch is never imported, so it answers in well under a
second for a small catalog. It never raises for a user mistake: the problems come back as
``(spec path, message)`` rows (:meth:`Preflight.raise_for_problems` turns them into one
:class:`InvalidInput`).
"""

from __future__ import annotations

import difflib
import os
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advrec.pipeline.spec import PRESETS, EvaluationSpec
from advrec_common.errors import invalid
from advrec_common.validation import validation_problems


@dataclass
class Preflight:
    """The spec (None when it did not parse), every problem found, and what was learnt on the way."""

    spec: EvaluationSpec | None
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.spec is not None and not self.problems

    def raise_for_problems(self, what: str = "invalid evaluation spec") -> EvaluationSpec:
        """The spec, or one InvalidInput listing every problem."""
        if not self.ok:
            raise invalid(self.problems, what)
        assert self.spec is not None
        return self.spec


def _parse(document: Any, out: Preflight) -> EvaluationSpec | None:
    from pydantic import ValidationError

    if not isinstance(document, dict):
        out.problems.append(("", "a spec must be a mapping (YAML/JSON object)"))
        return None
    data = dict(document)
    if "preset" in data:
        name = data.pop("preset")
        if not isinstance(name, str) or name not in PRESETS:
            out.problems.append(("preset", f"unknown preset {name!r}; known: {sorted(PRESETS)}"))
            return None
        data = {**PRESETS[name](), **data}
    try:
        return EvaluationSpec.model_validate(data)
    except ValidationError as exc:
        out.problems.extend(validation_problems(exc))
        out.facts["_salvaged"] = _salvage(data, exc)
        return None


# sections the checks against the catalog read: a field problem in one of them stops those checks
_CATALOG_SECTIONS = ("dataset", "ks", "scenario")
# placeholders for sections the catalog checks never read (their own problems are already listed)
_PLACEHOLDERS = {"attacks": [{"method": "fgsm", "eps": [8]}], "recommenders": [{"name": "vbpr"}]}


def _salvage(data: dict[str, Any], exc: Any) -> EvaluationSpec | None:
    """What of a spec that failed to parse the catalog checks can still read, so that they run too
    ("every problem at once"): None when the dataset, ``ks`` or scenario is itself invalid.

    Other failing fields take their defaults, attacks and recommenders are not read, and an extractor
    with a problem becomes None in its place (its index, and so every spec path, stays as written).
    """
    from pydantic import ValidationError

    bad_sections: set[str] = set()
    bad_extractors: set[int] = set()
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        if not loc:
            return None  # a problem of the whole spec: nothing to salvage safely
        bad_sections.add(str(loc[0]))
        if loc[0] == "extractors" and len(loc) > 1 and isinstance(loc[1], int):
            bad_extractors.add(loc[1])
        elif loc[0] == "extractors":
            bad_extractors.add(-1)  # missing, empty or not a list: no extractor to check
    if bad_sections & set(_CATALOG_SECTIONS):
        return None
    trial = {k: v for k, v in data.items() if k not in bad_sections or k == "extractors"}
    trial.update(_PLACEHOLDERS)
    extractors = data.get("extractors") if isinstance(data.get("extractors"), list) and -1 not in bad_extractors else []
    good = [e for i, e in enumerate(extractors) if i not in bad_extractors]
    trial["extractors"] = good or [{"name": "placeholder", "source": "demo", "defense": "standard"}]
    try:
        spec = EvaluationSpec.model_validate(trial)
    except ValidationError:
        return None
    parsed = iter(spec.extractors if good else [])
    aligned = [None if i in bad_extractors else next(parsed) for i in range(len(extractors))]
    return spec.model_copy(update={"extractors": aligned})


def _device_available(device: str) -> str | None:
    """Why ``device`` cannot run here (None if it can), without importing torch."""
    if device in ("auto", "cpu"):
        return None
    if device.startswith("cuda"):
        if not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")):
            return f"device {device!r} was asked for but this machine has no NVIDIA GPU; use 'cpu' or 'auto'"
        return None
    return f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:n]'"


def _check_dataset(spec: EvaluationSpec, out: Preflight, max_pixels: int) -> None:
    ds = spec.dataset
    if ds.kind == "demo":
        out.facts.update(n_items=ds.n_items, n_users=ds.n_users, categories=None)
        return
    if ds.kind == "study":
        root = Path(ds.root)  # type: ignore[arg-type]
        for rel in ("trainingset.tsv", "testset.tsv", "original/images"):
            if not (root / rel).exists():
                out.problems.append(("dataset.root", f"{root / rel} does not exist (the study layout needs it)"))
        images = root / "original" / "images"
        if images.is_dir():  # items are the numbered images 0..N-1 (the loader names any that is missing)
            ids = [int(f.stem) for f in images.iterdir()
                   if f.stem.isdigit() and f.suffix.lower() in (".jpg", ".jpeg", ".png")]
            if ids:
                out.facts["n_items"] = max(ids) + 1
        return
    from advrec_common.datasets.preflight import check_generic_dataset

    # every extractor brings images to one size (its image_size, else its input size): mixed sizes are fine
    report = check_generic_dataset(
        ds.images_dir, ds.interactions, ds.categories, ds.columns, ds.category_columns, max_pixels=max_pixels,  # type: ignore[arg-type]
        kcore=ds.kcore, require_uniform_size=False)
    for p in report.problems:
        where = f"{p.file}:{p.line}: " if p.file and p.line else (f"{p.file}: " if p.file else "")
        loc = {"interactions": "dataset.interactions", "categories": "dataset.categories"}.get(
            _file_role(p.file, ds), "dataset.images_dir")
        (out.problems if p.severity == "error" else out.warnings).append((loc, where + p.message))
    out.facts.update(n_items=report.items, n_users=report.users, n_interactions=report.interactions,
                     items_without_category=report.items_without_category if ds.categories is not None
                     else report.items)
    if not report.ok:  # the catalog could not be read as asked: its labels are unknown, not absent
        out.facts["catalog_unread"] = True
    elif ds.categories is not None:
        out.facts["items_per_category"] = report.items_per_category
    sizes = [tuple(int(v) for v in wh.split("x")) for wh in report.image_sizes]
    if sizes:  # the largest native image (an extractor without image_size works at native size)
        out.facts["max_image_pixels"] = max(w * h for w, h in sizes)
    if ds.categories is not None and report.ok:
        from advrec_common.datasets.generic_layout import read_categories

        labels, _ = read_categories(Path(ds.categories), ds.category_columns)  # its problems are reported above
        if labels:
            out.facts["categories"] = sorted({c for c in labels.values() if c})


def _file_role(file: str | None, ds: Any) -> str:
    if file is None:
        return ""
    name = Path(file).name
    if ds.interactions is not None and name == Path(ds.interactions).name:
        return "interactions"
    if ds.categories is not None and name == Path(ds.categories).name:
        return "categories"
    return "images"


def _check_against_catalog(spec: EvaluationSpec, out: Preflight) -> None:
    n_items = out.facts.get("n_items")
    if n_items:
        for i, k in enumerate(spec.ks):
            if k > n_items:
                out.problems.append((f"ks[{i}]", f"K = {k} is larger than the catalog ({n_items} items)"))
        if spec.scenario.select_k > n_items:
            out.warnings.append(("scenario.select_k", f"{spec.scenario.select_k} is larger than the catalog "
                                                      f"({n_items} items): the scenario ranks whole lists"))
    scen = spec.scenario
    if scen.origin is not None and scen.origin == scen.target:
        out.problems.append(("scenario.target", f"origin and target are both {scen.origin!r}; they must differ"))
    for field_, name, known, source in _category_sets(spec, out):
        if name not in known:
            near = did_you_mean(name, known)
            out.problems.append((f"scenario.{field_}", f"{name!r} is not a category"
                                                       + (f" (did you mean {near!r}?)" if near else "")
                                                       + f": categories come from {source}: {_few(known)}"))


def _folded(text: str) -> str:
    """``text`` without case and accents: 'Calzado Niño' and 'calzado nino' fold alike."""
    decomposed = unicodedata.normalize("NFKD", text.strip())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def did_you_mean(name: str, known: list[str]) -> str | None:
    """The one known name ``name`` differs from only by case or accents, else the closest spelling (None
    when nothing is close)."""
    folded = [k for k in known if _folded(k) == _folded(name)]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(_folded(name), [_folded(k) for k in known], n=1, cutoff=0.8)
    return next((k for k in known if close and _folded(k) == close[0]), None)


def _extractors(spec: EvaluationSpec) -> list[tuple[int, Any]]:
    """(index, extractor) of the spec's extractors that parsed (a salvaged spec holds None for the others)."""
    return [(i, ext) for i, ext in enumerate(spec.extractors) if ext is not None]


def _few(names: list[str], n: int = 20) -> str:
    return ", ".join(repr(x) for x in names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _extractor_classes(spec: EvaluationSpec, index: int) -> list[str] | None:
    """The classes an extractor predicts, when known without torch (None otherwise)."""
    from services.extractor.named_weights import NAMED_WEIGHTS

    ext = spec.extractors[index]
    if ext.source == "named" and ext.weight_name in NAMED_WEIGHTS:
        return NAMED_WEIGHTS[ext.weight_name].class_names()
    if ext.source == "demo":
        from advrec_common.datasets.demo_images import DEMO_CATEGORIES

        return list(DEMO_CATEGORIES)
    return None


def _catalog_categories(spec: EvaluationSpec, out: Preflight) -> tuple[list[str] | None, bool]:
    """(the catalog's labels, whether the study will use them rather than the extractors' classes)."""
    scen = spec.scenario
    labels = out.facts.get("categories")
    fully_labelled = bool(labels) and out.facts.get("items_without_category") == 0
    if spec.dataset.kind == "demo":
        from advrec_common.datasets.demo_images import DEMO_CATEGORIES

        labels, fully_labelled = list(DEMO_CATEGORIES), True
    return labels, scen.category_source == "catalog" or (scen.category_source == "auto" and fully_labelled)


def _check_items_per_category(spec: EvaluationSpec, out: Preflight) -> None:
    """With the catalog's labels, what the scenario step would refuse after training: an automatic origin
    needs a category (other than the target) of at least ``scenario.min_items`` items, a named one items."""
    counts: dict[str, int] | None = out.facts.get("items_per_category")
    labels, from_catalog = _catalog_categories(spec, out)
    if not counts or not from_catalog or spec.dataset.kind != "generic":
        return
    scen = spec.scenario
    shown = ", ".join(f"{name} {n}" for name, n in counts.items())
    if scen.origin is None:
        eligible = [c for c, n in counts.items() if n >= scen.min_items and c != scen.target]
        if not eligible:
            other = f" other than the target {scen.target!r}" if scen.target is not None else ""
            out.problems.append(("scenario.min_items", f"no category{other} has {scen.min_items} items to push (items "
                                                       f"per category, from the catalog's labels: {shown}); lower "
                                                       f"scenario.min_items or name scenario.origin"))
    elif labels and scen.origin in labels and not counts.get(scen.origin):
        out.problems.append(("scenario.origin", f"{scen.origin!r} has no item in the catalog (its labelled items have "
                                                f"no image or no kept interaction), so there is nothing to attack; "
                                                f"items per category: {shown}"))


def _category_sets(spec: EvaluationSpec, out: Preflight) -> list[tuple[str, str, list[str], str]]:
    """(scenario field, name, the categories it must be one of, where they come from) to check."""
    scen = spec.scenario
    names = [(f, getattr(scen, f)) for f in ("origin", "target") if getattr(scen, f) is not None]
    if not names:
        return []
    if spec.dataset.kind == "study" and scen.category_source != "extractor":
        return []  # the study layout's labels (items.tsv) are read with the dataset, not here
    if out.facts.get("catalog_unread") and scen.category_source != "extractor":
        return []  # whose categories they are depends on the catalog's labels: its own problems come first
    labels, from_catalog = _catalog_categories(spec, out)
    if from_catalog:
        return [(f, n, labels, "the catalog's labels") for f, n in names] if labels else []
    checks = []
    for i, ext in _extractors(spec):
        classes = _extractor_classes(spec, i)
        if classes is not None:
            checks += [(f, n, classes, f"the classes of extractor {ext.name!r} (category_source "
                                       f"{scen.category_source!r}"
                                       f"{', the catalog has no labels' if not labels and scen.category_source == 'auto' else ''})")
                       for f, n in names]
    return checks


def _check_categories(spec: EvaluationSpec, out: Preflight) -> None:
    """Labels where the spec needs them: ``category_source: catalog`` and extractors trained on the catalog."""
    if spec.dataset.kind == "demo":
        return
    missing = out.facts.get("items_without_category")
    n_items = out.facts.get("n_items")
    if not n_items or missing is None:
        return
    where = "dataset.categories"
    why = (f"{missing} of {n_items} items have no category label" if spec.dataset.categories is not None
           else "the catalog has no category labels (dataset.categories is not set)")
    if spec.scenario.category_source == "catalog" and missing:
        out.problems.append(("scenario.category_source", f"'catalog' needs a label for every item, but {why}; "
                                                         f"label them in {where} or use 'extractor'"))
    elif spec.scenario.category_source == "auto" and missing and spec.dataset.categories is not None:
        out.warnings.append(("scenario.category_source", f"'auto' falls back to the extractors' classes because "
                                                         f"{why}; label every item to use the catalog's own"))
    elif spec.scenario.category_source == "auto" and spec.dataset.kind == "generic" and spec.dataset.categories is None:
        out.warnings.append(("dataset.categories", "not set: items take the class each extractor assigns (for "
                                                   "ImageNet weights one of 1,000 ImageNet classes), which rarely "
                                                   "fits a shop's products and may put most items in one class; "
                                                   "give your own labels to study your own categories"))
    for i, ext in _extractors(spec):
        if ext.source == "train" and missing:
            out.problems.append((f"extractors[{i}].source", f"'train' learns the catalog's categories, but {why}"))
    labels = out.facts.get("categories")
    if labels is not None and len(labels) < 2 and (spec.scenario.category_source == "catalog" or not missing):
        out.problems.append(("dataset.categories", f"the catalog has only one category ({labels}); an attack "
                                                   f"pushes one category toward another"))


def _check_extractors(spec: EvaluationSpec, out: Preflight, weights_dir: Path | None) -> None:
    from advrec_common.vision.backbone_names import BACKBONE_INPUT_SIZES, known_backbone
    from services.extractor.named_weights import missing_weight_message

    if weights_dir is None:
        from advrec_common.settings import get_settings

        weights_dir = get_settings().resolved_weights_dir
    _check_ignored_dataset_fields(spec, out)
    for i, ext in _extractors(spec):
        at = f"extractors[{i}]"
        if ext.source == "checkpoint" and ext.checkpoint is not None and not Path(ext.checkpoint).is_file():
            out.problems.append((f"{at}.checkpoint", f"{ext.checkpoint} does not exist"))
        for field_, name in (("weight_name", ext.weight_name if ext.source == "named" else None),
                             ("init_weights", ext.init_weights if ext.source == "train" else None)):
            why = missing_weight_message(name, weights_dir) if name else None
            if why:
                out.problems.append((f"{at}.{field_}", why))
        _check_ignored_fields(spec, i, out)
        if ext.source == "demo" and (ext.image_size or spec.dataset.image_size) > 512:
            out.problems.append((f"{at}.image_size", "demo extractors are trained at 16..512 px"))
        if ext.source == "demo" and spec.dataset.kind != "demo":
            out.warnings.append((f"{at}.source", "demo extractors learn the demo's generated clothing drawings "
                                                 f"(at {ext.image_size or spec.dataset.image_size} px), not your "
                                                 f"products: use a named weight or source 'train'"))
        if ext.source in ("checkpoint", "train") and ext.backbone is not None and not known_backbone(ext.backbone):
            out.problems.append((f"{at}.backbone", f"unknown backbone {ext.backbone!r}; known: "
                                                   f"{sorted(BACKBONE_INPUT_SIZES)} or 'timm:<name>'"))
        backbone = ext.backbone or (_named_backbone(ext.weight_name) if ext.source == "named" else None)
        if ext.image_size is not None and ext.image_size < 32 and backbone not in (None, "tiny_cnn", "small_cnn"):
            out.warnings.append((f"{at}.image_size", f"{ext.image_size} px is very small for {backbone!r} "
                                                     f"(trained at 224 px): its features will mean little"))


def _named_backbone(name: str | None) -> str | None:
    from services.extractor.named_weights import NAMED_WEIGHTS

    return NAMED_WEIGHTS[name].backbone if name in NAMED_WEIGHTS else None


# fields that only some extractor sources read; set on another source they would be ignored silently
_SOURCE_FIELDS = {"checkpoint": ("checkpoint",), "layout": ("checkpoint",), "weight_name": ("named",),
                  "demo_images_per_class": ("demo",), "epochs": ("demo", "train"), "init_weights": ("train",),
                  "training": ("train",)}
_DATASET_FIELDS = {"n_items": ("demo",), "n_users": ("demo",), "image_size": ("demo",), "seed": ("demo",),
                   "root": ("study",), "images_dir": ("generic",), "interactions": ("generic",),
                   "categories": ("generic",), "columns": ("generic",), "category_columns": ("generic",),
                   "kcore": ("generic",)}


def _set(model: Any, name: str) -> bool:
    """``name`` was given a value other than its default (a spec dumped whole sets every field)."""
    info = type(model).model_fields[name]
    return name in model.model_fields_set and getattr(model, name) != info.get_default(call_default_factory=True)


def _check_ignored_fields(spec: EvaluationSpec, index: int, out: Preflight) -> None:
    ext = spec.extractors[index]
    for name in sorted(n for n in ext.model_fields_set if _set(ext, n)):
        if name in _SOURCE_FIELDS and ext.source not in _SOURCE_FIELDS[name]:
            out.warnings.append((f"extractors[{index}].{name}", f"ignored: source {ext.source!r} does not read it "
                                                                 f"(only {' or '.join(_SOURCE_FIELDS[name])} do)"))


def _check_ignored_dataset_fields(spec: EvaluationSpec, out: Preflight) -> None:
    for name in sorted(n for n in spec.dataset.model_fields_set if _set(spec.dataset, n)):
        if name in _DATASET_FIELDS and spec.dataset.kind not in _DATASET_FIELDS[name]:
            out.warnings.append((f"dataset.{name}", f"ignored: dataset kind {spec.dataset.kind!r} does not "
                                                    f"read it (only {' or '.join(_DATASET_FIELDS[name])})"))


def preflight(document: Any, *, device: str = "auto", max_pixels: int = 4096 * 4096,
              weights_dir: str | Path | None = None) -> Preflight:
    """Parse ``document`` (a spec mapping, or ``{"preset": NAME, ...overrides}``) and check everything
    it names that can be checked before compute; never raises for a user mistake.

    ``weights_dir``: where named weights live (default: the settings')."""
    out = Preflight(spec=None)
    spec = _parse(document, out)
    why = _device_available(device)
    if why:
        out.problems.append(("--device", why))
    salvaged = out.facts.pop("_salvaged", None)
    if spec is None and salvaged is None:
        return out
    out.spec = spec  # None when it did not parse: the checks below then run on what parsed
    checked = spec if spec is not None else salvaged
    _check_dataset(checked, out, max_pixels)
    _check_against_catalog(checked, out)
    _check_items_per_category(checked, out)
    _check_categories(checked, out)
    _check_extractors(checked, out, Path(weights_dir) if weights_dir is not None else None)
    return out
