"""The GPU run's wheelhouse (scripts/gpu_wheelhouse.txt) covers what advrec needs beyond the GPU image.

benchmarks/gpu.sh installs those wheels on the lent GPU machine, where nothing can be fetched: a
dependency that is neither on its image (scripts/gpu_image_packages.txt) nor pinned would fail there,
after the machine's start, instead of here.
"""

from __future__ import annotations

import importlib.metadata as metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# the GPU machine's interpreter: CPython 3.12 on x86-64 Linux
GPU_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _lines(name: str) -> list[str]:
    text = (ROOT / "scripts" / name).read_text()
    return [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]


def _pins() -> dict[str, str]:
    return {canonicalize_name(r.name): next(iter(r.specifier)).version
            for r in map(Requirement, _lines("gpu_wheelhouse.txt"))}


def _image() -> set[str]:
    return {canonicalize_name(n) for n in _lines("gpu_image_packages.txt")}


def test_pins_are_exact_and_one_per_package() -> None:
    reqs = [Requirement(s) for s in _lines("gpu_wheelhouse.txt")]
    inexact = [str(r) for r in reqs if [s.operator for s in r.specifier] != ["=="]]
    assert inexact == [], "pin exact versions: the wheelhouse holds one wheel of each"
    names = [canonicalize_name(r.name) for r in reqs]
    assert sorted({n for n in names if names.count(n) > 1}) == []  # pip refuses two versions of one package
    assert {"pydantic", "fastapi", "celery", "torchattacks", "foolbox"} <= set(names)


def test_every_dependency_of_advrec_is_on_the_image_or_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # torchattacks is installed by scripts/bootstrap (--no-deps), outside pyproject's list
    deps = [Requirement(d) for d in project["dependencies"]] + [Requirement("torchattacks")]
    covered = _image() | set(_pins())
    missing = [str(d) for d in deps if canonicalize_name(d.name) not in covered]
    assert missing == [], "add these to scripts/gpu_wheelhouse.txt"


def test_pinned_packages_need_nothing_unpinned() -> None:
    """Read from the metadata of the pinned versions where they are the ones installed here."""
    pins, image = _pins(), _image()
    checked, missing = 0, []
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(GPU_PYTHON):
                continue  # an extra, or another platform or python
            if canonicalize_name(req.name) not in pins and canonicalize_name(req.name) not in image:
                missing.append(f"{name} {version} needs {req}")
    if checked == 0:
        pytest.skip("none of the pinned versions is installed here")
    assert missing == [], "add these to scripts/gpu_wheelhouse.txt"
