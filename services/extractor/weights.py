"""Loading feature-extractor checkpoints from local files in the layouts people publish them in.

Every supported on-disk layout is described as data (:class:`Layout`): where the state dict sits
in the file, which key prefixes are stripped, which belong to the network and which are known
extras (normaliser buffers, the Madry attacker's duplicate weights) that are dropped. The network
comes from the one backbone registry (:mod:`advrec_common.vision.backbones`); reading is safe and
strict (:mod:`advrec_common.vision.checkpoint`). Named published weights are data too
(:data:`NAMED_WEIGHTS`, in the torch-free :mod:`services.extractor.named_weights`); advrec never
downloads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advrec_common.errors import BadCheckpoint, InvalidInput, MissingWeights
from advrec_common.vision.backbones import BACKBONES, build_model
from advrec_common.vision.checkpoint import (
    check_finite,
    describe,
    few_keys,
    is_state_dict,
    load_strict,
    read_checkpoint,
)
from advrec_common.vision.model import IMAGENET_MEAN, IMAGENET_STD, ImageModel
from advrec_common.vision.model_file import ADVREC_FORMAT, is_model_file_document, model_from_document
from services.extractor.named_weights import (  # noqa: F401  (re-exported: the named weights' data)
    NAMED_WEIGHTS,
    NamedWeight,
    missing_weight_message,
    named_weight,
    named_weight_status,
)


# -- layouts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where a network's state dict lives in a checkpoint file and how its keys are spelled.

    ``containers``: top-level keys that may hold the state dict (``None`` = the file is the bare
    state dict); ``strip``: prefixes removed from every key when present (DataParallel's
    ``module.``); ``net_prefix``: keys of the network (prefix removed); ``extras``: prefixes of
    known non-network entries that are dropped; ``mean_key``/``std_key``: normaliser buffers.
    """

    name: str
    containers: tuple[str | None, ...]
    strip: tuple[str, ...] = ()
    net_prefix: str = ""
    extras: tuple[str, ...] = ()
    mean_key: str | None = None
    std_key: str | None = None
    description: str = ""

    def state_dict(self, obj: Any) -> dict[str, torch.Tensor]:
        """The raw state dict inside ``obj`` (BadCheckpoint if this layout does not fit)."""
        for container in self.containers:
            if container is None and is_state_dict(obj):
                return dict(obj)
            if container is not None and isinstance(obj, Mapping) and is_state_dict(obj.get(container)):
                return dict(obj[container])
        wanted = " or ".join("a bare state dict" if c is None else f"a dict with key {c!r}" for c in self.containers)
        raise BadCheckpoint(f"layout {self.name!r} expects {wanted}; the file holds {describe(obj)}")

    def split(self, sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(network state dict with bare keys, dropped extras); unknown keys -> BadCheckpoint."""
        net: dict[str, torch.Tensor] = {}
        extra: dict[str, torch.Tensor] = {}
        unknown: list[str] = []
        for key, value in sd.items():
            k = key
            for prefix in self.strip:
                k = k.removeprefix(prefix)
            if any(k.startswith(e) for e in self.extras):
                extra[k] = value
            elif k.startswith(self.net_prefix):
                net[k.removeprefix(self.net_prefix)] = value
            else:
                unknown.append(key)
        if unknown:
            raise BadCheckpoint(
                f"layout {self.name!r}: {len(unknown)} unexpected key(s) such as {few_keys(unknown)} "
                f"(network keys should start with {self.net_prefix!r})"
            )
        return net, extra

    def normalisation(self, extra: Mapping[str, torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) from the normaliser buffers when the file has them, else ImageNet's."""
        if self.mean_key and self.std_key and self.mean_key in extra and self.std_key in extra:
            mean, std = extra[self.mean_key].flatten(), extra[self.std_key].flatten()
            if mean.numel() != 3 or std.numel() != 3 or not bool((std > 0).all()):
                raise BadCheckpoint(f"layout {self.name!r}: normaliser buffers must be 3 values with std > 0")
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
        return IMAGENET_MEAN, IMAGENET_STD


LAYOUTS: dict[str, Layout] = {
    "torchvision": Layout("torchvision", containers=(None,), description="bare state dict of a torchvision model"),
    "madry": Layout(
        "madry",
        containers=("model",),
        strip=("module.",),
        net_prefix="model.",
        extras=("normalizer.", "attacker."),
        mean_key="normalizer.new_mean",
        std_key="normalizer.new_std",
        description="MadryLab robustness: {'model': DataParallel(AttackerModel) state dict, ...}",
    ),
    "free_at": Layout(
        "free_at",
        containers=("state_dict",),
        strip=("module.",),
        description="Free-AT: {'state_dict': DataParallel(net) state dict, 'epoch', 'arch', 'best_prec1', ...}",
    ),
    "robustbench": Layout(
        "robustbench",
        containers=(None, "state_dict"),
        strip=("module.",),
        net_prefix="model.",
        extras=("normalize.",),
        mean_key="normalize.mean",
        std_key="normalize.std",
        description="RobustBench: Sequential(normalize, model) state dict, bare or under 'state_dict'",
    ),
    "advrec": Layout("advrec", containers=("state_dict",), description=f"advrec's own ({ADVREC_FORMAT!r})"),
}


def detect_layout(obj: Any) -> str:
    """The name of the layout of a loaded checkpoint object (BadCheckpoint when none fits)."""
    if is_model_file_document(obj):
        return "advrec"
    if isinstance(obj, Mapping) and is_state_dict(obj.get("model")):
        return "madry"
    if isinstance(obj, Mapping) and is_state_dict(obj.get("state_dict")):
        keys = [k.removeprefix("module.") for k in obj["state_dict"]]
        return "robustbench" if _robustbench_keys(keys) else "free_at"
    if is_state_dict(obj):
        keys = [k.removeprefix("module.") for k in obj]
        return "robustbench" if _robustbench_keys(keys) else "torchvision"
    raise BadCheckpoint(f"cannot detect the checkpoint layout of {describe(obj)}; known layouts: {sorted(LAYOUTS)}")


def _robustbench_keys(keys: Sequence[str]) -> bool:
    return any(k.startswith("normalize.") for k in keys) or all(k.startswith("model.") for k in keys)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (torchvision's order; data in advrec, nothing is downloaded)."""
    from advrec_common.vision.imagenet_classes import IMAGENET1K_CLASSES

    return list(IMAGENET1K_CLASSES)


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet names for a 1000-way head, else ``class_<i>``."""
    return imagenet_class_names() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]


# -- public API ------------------------------------------------------------------------------------
def load_extractor(
    path: str | Path, backbone: str, layout: str = "auto", class_names: Sequence[str] | None = None
) -> ImageModel:
    """Load a local checkpoint into an :class:`ImageModel` (eval mode, CPU).

    ``layout``: one of :data:`LAYOUTS` or ``"auto"`` (:func:`detect_layout`). For the ``advrec``
    layout the file's own backbone and class names win over the arguments unless they conflict.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise InvalidInput(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)} or 'auto'")
    obj = read_checkpoint(path)
    name = detect_layout(obj) if layout == "auto" else layout
    where = f"{path} (layout {name!r})"
    if name == "advrec":
        return model_from_document(obj, where, backbone, class_names)
    loadable = sorted(n for n, b in BACKBONES.items() if b.head_key)
    if backbone not in loadable:
        raise InvalidInput(f"backbone {backbone!r} cannot load {name!r} checkpoints; known: {loadable}")
    spec, lay = BACKBONES[backbone], LAYOUTS[name]
    net_sd, extra = lay.split(lay.state_dict(obj))
    check_finite(net_sd, where)
    check_finite(extra, where)
    head = net_sd.get(spec.head_key)
    if head is None or head.ndim != 2:
        raise BadCheckpoint(f"{where}: no classifier weight {spec.head_key!r} for backbone {backbone!r}; keys: "
                            f"{few_keys(list(net_sd))}")
    num_classes = int(head.shape[0])
    names = list(class_names) if class_names is not None else default_class_names(num_classes)
    if len(names) != num_classes:
        raise InvalidInput(f"{len(names)} class names given but the checkpoint's head has {num_classes} outputs")
    net = spec.net(num_classes)
    load_strict(net, net_sd, where)
    mean, std = lay.normalisation(extra)
    return build_model(backbone, names, mean=mean, std=std, net=net).eval()


# -- named pretrained weights (the data: services.extractor.named_weights, torch-free) -------------
def resolve_named_weights(name: str, weights_dir: str | Path) -> ImageModel:
    """Load named pretrained weights from ``weights_dir``; MissingWeights says which file to put where."""
    spec = named_weight(name)
    why = missing_weight_message(name, weights_dir)
    if why is not None:
        raise MissingWeights(why)
    return load_extractor(spec.path(weights_dir), spec.backbone, layout=spec.layout,
                          class_names=spec.class_names())

