"""Every check that can run before compute, at once: ``advrec run SPEC --validate`` and the gateway's
admission call :func:`preflight` before anything is planned or queued.

It parses the spec (every field problem with its spec path), then checks what the spec points at
without loading models or pixels: the catalog files (:func:`advrec_common.datasets.preflight.
check_generic_dataset`: every row and image header), the catalog size against ``ks``, scenario
names against the catalog's labels, checkpoints on disk, and the device. Torch is never imported,
so it answers in well under a second for a small catalog. It never raises for a user mistake: the
problems come back as ``(spec path, message)`` rows (:meth:`Preflight.raise_for_problems` turns
them into one :class:`InvalidInput`).
"""

from __future__ import annotations

import os
import shutil
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
        return None


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
        return
    from advrec_common.datasets.preflight import check_generic_dataset

    report = check_generic_dataset(
        ds.images_dir, ds.interactions, ds.categories, ds.columns, ds.category_columns, max_pixels=max_pixels,  # type: ignore[arg-type]
        kcore=ds.kcore, require_uniform_size=any(e.image_size is None for e in spec.extractors))
    for p in report.problems:
        where = f"{p.file}:{p.line}: " if p.file and p.line else (f"{p.file}: " if p.file else "")
        loc = {"interactions": "dataset.interactions", "categories": "dataset.categories"}.get(
            _file_role(p.file, ds), "dataset.images_dir")
        (out.problems if p.severity == "error" else out.warnings).append((loc, where + p.message))
    out.facts.update(n_items=report.items, n_users=report.users, n_interactions=report.interactions)
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
    labels = out.facts.get("categories")
    if labels:
        for field_ in ("origin", "target"):
            name = getattr(spec.scenario, field_)
            if name is not None and name not in labels:
                out.problems.append((f"scenario.{field_}", f"{name!r} is not a category of the catalog; "
                                                           f"categories: {labels[:20]}"))


def _check_extractors(spec: EvaluationSpec, out: Preflight) -> None:
    for i, ext in enumerate(spec.extractors):
        if ext.source == "checkpoint" and ext.checkpoint is not None and not Path(ext.checkpoint).is_file():
            out.problems.append((f"extractors[{i}].checkpoint", f"{ext.checkpoint} does not exist"))


def preflight(document: Any, *, device: str = "auto", max_pixels: int = 4096 * 4096) -> Preflight:
    """Parse ``document`` (a spec mapping, or ``{"preset": NAME, ...overrides}``) and check everything
    it names that can be checked before compute; never raises for a user mistake."""
    out = Preflight(spec=None)
    spec = _parse(document, out)
    why = _device_available(device)
    if why:
        out.problems.append(("--device", why))
    if spec is None:
        return out
    out.spec = spec
    _check_dataset(spec, out, max_pixels)
    _check_against_catalog(spec, out)
    _check_extractors(spec, out)
    return out
