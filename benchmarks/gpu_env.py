"""Everything benchmarks/gpu.sh needs, checked before any figure is measured; prints what it found.

    python benchmarks/gpu_env.py [--site DIR]

1. every distribution installed from the wheelhouse (``--site``, the folder gpu.sh installed it into)
   has its requirements met by what this python sees, the wheelhouse or the machine's own packages:
   each unmet one is named, with the version found;
2. torch and torchvision: their versions and the device;
3. every module of advrec, advrec_common, services and gateway imports, and so do the libraries the
   run loads lazily (foolbox for C&W, uvicorn, Celery's Redis transport).

Exits 1 listing every problem, 0 otherwise. Run it with the repository on PYTHONPATH (gpu.sh does).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import os
import pkgutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGES = ("advrec_common", "services", "advrec", "gateway")
# imported inside functions or by a subprocess (`python -m uvicorn`, a Celery worker), not at import time
LAZY = ("torchattacks", "foolbox", "eagerpy", "uvicorn", "python_multipart", "kombu.transport.redis", "redis")
# torchattacks 3.5.1 pins requests~=2.25.1 but never imports requests (README, "Libraries")
KNOWN_STALE = {("torchattacks", "requests")}


def unmet_requirements(site: Path) -> list[str]:
    """Requirements of the distributions in ``site`` that nothing on sys.path satisfies."""
    problems = []
    for dist in metadata.distributions(path=[str(site)]):
        name = canonicalize_name(dist.metadata["Name"])
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra nobody asked for, or another platform / python
            if (name, canonicalize_name(req.name)) in KNOWN_STALE:
                continue
            try:
                found = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name} needs {req}: not installed (add it to scripts/gpu_wheelhouse.txt)")
                continue
            if req.specifier and not req.specifier.contains(found, prereleases=True):
                problems.append(f"{name} needs {req}: found {req.name} {found} (pin another version in "
                                "scripts/gpu_wheelhouse.txt)")
    return problems


def import_everything() -> tuple[int, list[str]]:
    """Import every module of the project and the lazily loaded libraries; (count, failures)."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython, which wants a git binary
    names: list[str] = []
    problems = []
    for top in PACKAGES:
        try:
            package = importlib.import_module(top)
        except Exception as e:  # every failure is reported, none stops the check
            problems.append(f"import {top}: {type(e).__name__}: {e}")
            continue
        names.append(top)
        # __main__ modules run the CLI when imported
        names += [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")
                  if m.name.rsplit(".", 1)[-1] != "__main__"]
    names += LAZY
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # reported like the others
            problems.append(f"import {name}: {type(e).__name__}: {e}")
    return len(names), problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, help="the folder the wheelhouse was installed into")
    args = ap.parse_args(argv)
    problems: list[str] = []

    if args.site is not None:
        installed = sorted(f"{d.metadata['Name']} {d.version}" for d in metadata.distributions(path=[str(args.site)]))
        print(f"wheelhouse: {len(installed)} distributions in {args.site}")
        problems += unmet_requirements(args.site)

    import torch
    import torchvision

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"torchvision {torchvision.__version__}: {cuda}")

    count, failed = import_everything()
    print(f"imports: {count - len(failed)} of {count} modules")
    problems += failed
    for p in problems:
        print(f"PROBLEM: {p}")
    print("environment: ok" if not problems else f"environment: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
