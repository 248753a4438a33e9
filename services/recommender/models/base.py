"""The one interface every recommender honours: ``fit``, ``score``, ``replace_items``, ``save``/``load``.

A subclass declares ``name``, ``needs`` (the :class:`ItemSide` fields it reads) and ``DEFAULTS``
(per-preset hyper-parameters) and implements small hooks:

* ``_dims(items, train) -> dict`` -- shapes fixed at fit (JSON-able; saved with the weights),
* ``_build(dims)`` -- create parameters and item buffers of those shapes,
* ``_item_state(prepared) -> object`` -- everything item-side that scoring needs, computed once
  per ``score`` call from scaled item tensors (stored ones, or replacements),
* ``_score_chunk(users (B,), state) -> (B,I)``,
* ``batch_loss(users, pos, neg) -> scalar`` and ``param_groups() -> optimizer groups`` -- the loss as
  autograd sees it (the reference definition; ACF and DVBPR train through it),
* optionally ``train_tables()`` and ``bpr_grads(W, G, batch)`` -- the same loss's gradients written
  out over stacked parameter tables (the BPR family: BPR-MF, VBPR, AMR, DeepStyle), which trains
  with row-sparse updates and several seeds at once (:mod:`services.recommender.training`).

Subclasses register themselves by ``name`` (:data:`REGISTRY`), so :meth:`Recommender.load` finds the
class of a saved model without importing the registry module.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from advrec_common.datasets.types import Interactions
from advrec_common.errors import BadCheckpoint, InvalidInput, NotFound
from services.recommender.config import RecConfig, block_problems, parse_config, values_per_block
from services.recommender.items import ItemSide, max_abs_scale
from services.recommender.sampling import Batch
from services.recommender.scoring import as_user_tensor
from services.recommender.training import FitReport, fit_models

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"

REGISTRY: dict[str, type[Recommender]] = {}

__all__ = ["CONFIG_FILE", "REGISTRY", "STATE_FILE", "Batch", "FitReport", "Recommender", "as_user_tensor"]


class Recommender(nn.Module):
    """Base class: a BPR-trained scorer over a fixed user set and item catalog."""

    name: ClassVar[str] = "base"
    needs: ClassVar[set[str]] = set()
    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.name] = cls

    def __init__(self, n_users: int, n_items: int, config: RecConfig | dict[str, Any] | None = None):
        super().__init__()
        if n_users < 1 or n_items < 2:
            raise InvalidInput(f"need n_users >= 1 and n_items >= 2, got {n_users}, {n_items}")
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.config = parse_config(config).resolved(self.DEFAULTS)
        if problems := block_problems(self.name, self.config):
            raise InvalidInput("; ".join(problems))
        self.dims: dict[str, int] = {}
        self.fitted = False
        self.register_buffer("feature_scale", torch.tensor(1.0))
        self.register_buffer("spatial_scale", torch.tensor(1.0))

    def per_block(self, field: Literal["lr", "regs"]) -> list[float]:
        """``config.lr`` / ``config.regs`` as one value per parameter block, in
        :data:`~services.recommender.kinds.CONFIG_BLOCKS` order (a single value is broadcast)."""
        return values_per_block(self.name, field, getattr(self.config, field))

    # ----------------------------------------------------------------- hooks
    def _dims(self, items: ItemSide | None, train: Interactions) -> dict[str, int]:
        return {}

    def _build(self, dims: dict[str, int]) -> None:
        raise NotImplementedError

    def _item_state(self, prepared: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def _score_chunk(self, users: Tensor, state: Any) -> Tensor:
        raise NotImplementedError

    def batch_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def train_tables(self) -> dict[str, tuple[str, float]] | None:
        """Hand-gradient training: ``{parameter name: (kind, lr)}`` with kind in {"user", "item",
        "category", "dense"} (row tables indexed by user / item / category index, or one dense block);
        None = train through ``batch_loss`` with autograd."""
        return None

    def bpr_grads(self, W: dict[str, Tensor], G: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """Add d(batch_loss)/dW of every replicate into ``G`` -> (BPR loss per replicate (R,), touched rows).

        ``W``/``G``: stacked tables (see :mod:`services.recommender.optim`); ``batch`` holds the flat
        indices. The touched rows name, per row table, the flat indices whose gradient rows changed.
        """
        raise NotImplementedError

    def on_train_start(self, train: Interactions) -> None:
        """Called after _build with the (possibly reduced) training interactions."""

    def refresh_item_cache(self) -> None:
        """Recompute cached item representations from stored items (DVBPR)."""

    sample_by_user: bool = False  # keep each user's training pairs in one batch (ACF)
    current_epoch: int = 0  # set by the training loop (AMR switches phase on it)
    first_selectable_epoch: int = 1  # AMR: epochs before the adversarial phase are not selectable

    # ------------------------------------------------------------ item side
    @property
    def device(self) -> torch.device:
        return self.feature_scale.device

    def _register_item_buffers(self, dims: dict[str, int]) -> None:
        """Zero buffers of the fitted item shapes (filled by _store_items, restored by load)."""
        n = self.n_items
        if "features" in self.needs:
            self.register_buffer("items_features", torch.zeros(n, dims["feature_dim"]))
        if "spatial" in self.needs:
            self.register_buffer("items_spatial", torch.zeros(n, dims["regions"], dims["region_dim"]))
        if "categories" in self.needs:
            self.register_buffer("items_categories", torch.zeros(n, dtype=torch.long))

    def _check_items(self, items: ItemSide, fitting: bool) -> None:
        if items.n_items != self.n_items:
            raise InvalidInput(f"{self.name}: items have {items.n_items} rows, the model has {self.n_items} items")
        missing = [f for f in sorted(self.needs) if getattr(items, f) is None]
        if not fitting:  # categories are metadata: replacements may omit them and keep the fitted ones
            missing = [f for f in missing if f != "categories"]
        if missing:
            raise InvalidInput(f"{self.name} needs item {', '.join(missing)}")
        if fitting or not self.dims:
            return
        d = self.dims
        if "features" in self.needs and items.features.shape[1] != d["feature_dim"]:
            raise InvalidInput(f"features have dimension {items.features.shape[1]}, the model expects {d['feature_dim']}")
        if "spatial" in self.needs and tuple(items.spatial.shape[1:]) != (d["regions"], d["region_dim"]):
            raise InvalidInput(
                f"spatial features are {tuple(items.spatial.shape[1:])}, the model expects {(d['regions'], d['region_dim'])}"
            )
        if "images" in self.needs and tuple(items.images.shape[2:]) != (d["image_h"], d["image_w"]):
            raise InvalidInput(f"images are {tuple(items.images.shape[2:])}, the model expects {(d['image_h'], d['image_w'])}")
        if "categories" in self.needs and items.categories is not None and int(items.categories.max()) >= d["n_categories"]:
            raise InvalidInput(f"category index >= {d['n_categories']} (the categories seen at fit)")

    def _prepare(self, items: ItemSide) -> dict[str, Tensor]:
        """Scaled item tensors on the model's device (features / clean max |F|)."""
        dev, out = self.device, {}
        if "features" in self.needs:
            out["features"] = items.features.to(dev) / self.feature_scale
        if "spatial" in self.needs:
            out["spatial"] = items.spatial.to(dev) / self.spatial_scale
        if "images" in self.needs:
            out["images"] = items.images.to(dev)
        if "categories" in self.needs:
            cats = items.categories if items.categories is not None else self.items_categories
            out["categories"] = cats.to(dev)
        return out

    def _stored(self) -> dict[str, Tensor]:
        return {f: getattr(self, f"items_{f}") for f in self.needs if hasattr(self, f"items_{f}")}

    def _store_items(self, prepared: dict[str, Tensor]) -> None:
        for f, value in prepared.items():
            if hasattr(self, f"items_{f}"):
                setattr(self, f"items_{f}", value.clone())

    # ------------------------------------------------------------ public API
    def fit(
        self,
        train: Interactions,
        items: ItemSide | None = None,
        config: RecConfig | dict[str, Any] | None = None,
        valid: Interactions | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> FitReport:
        """Train from scratch with BPR on ``train`` (early stopping on ``valid`` or a per-user hold-out)."""
        if config is not None:
            self.config = parse_config(config).resolved(self.DEFAULTS)
        self.check_fit_inputs(train, items, valid)
        (report,) = fit_models([self], train, items, valid, progress)
        return report

    def check_fit_inputs(self, train: Interactions, items: ItemSide | None, valid: Interactions | None) -> None:
        """InvalidInput unless ``train``/``items``/``valid`` match the model's users, items and needs."""
        if (train.n_users, train.n_items) != (self.n_users, self.n_items):
            raise InvalidInput(
                f"train is {train.n_users}x{train.n_items}, the model is {self.n_users}x{self.n_items}"
            )
        if len(train) == 0:
            raise InvalidInput("train has no interactions")
        if self.needs:
            if items is None:
                raise InvalidInput(f"{self.name} needs item {', '.join(sorted(self.needs))}")
            self._check_items(items, fitting=True)
        if valid is not None and (valid.n_users, valid.n_items) != (self.n_users, self.n_items):
            raise InvalidInput("valid must have the same n_users/n_items as train")

    def setup(self, items: ItemSide | None, train: Interactions) -> None:
        """Fit the feature scales, build parameters (seeded) and store the clean items (used by training)."""
        if items is not None and "features" in self.needs:
            self.feature_scale = torch.tensor(max_abs_scale(items.features))
        if items is not None and "spatial" in self.needs:
            self.spatial_scale = torch.tensor(max_abs_scale(items.spatial))
        self.dims = self._dims(items, train)
        self._build(self.dims)
        self.to(self.config.device)
        if items is not None:
            self._store_items(self._prepare(items))
        self.on_train_start(train)
        self.fitted = True

    @torch.no_grad()
    def score(self, users: Tensor, items: ItemSide | None = None) -> Tensor:
        """Scores (B,I) of every item for ``users`` (B,), on the model's device.

        With ``items`` the item side is replaced for this call only (no retraining; the
        deployment scenario). Fields the model does not need are ignored.
        """
        self._require_fitted()
        u = as_user_tensor(users, self.n_users).to(self.device)
        state = self.item_state(items)
        return self.score_with_state(u, state)

    @torch.no_grad()
    def item_state(self, items: ItemSide | None = None) -> Any:
        """The item-side state of one scoring pass (reuse it across user batches)."""
        self._require_fitted()
        was_training = self.training
        self.eval()
        try:
            if items is None:
                return self._item_state(self._stored())
            self._check_items(items, fitting=False)
            return self._item_state(self._prepare(items))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score_with_state(self, users: Tensor, state: Any) -> Tensor:
        """Scores (B,I) of ``users`` (validated int64 on the model's device) against an item state."""
        was_training = self.training
        self.eval()
        try:
            step = self.config.score_batch
            if 0 < users.numel() <= step:  # one block: no copy through torch.cat
                return self._score_chunk(users, state)
            chunks = [self._score_chunk(users[s : s + step], state) for s in range(0, users.numel(), step)]
            return torch.cat(chunks) if chunks else torch.empty(0, self.n_items, device=self.device)
        finally:
            self.train(was_training)

    def score_items(self, users: Tensor, state: Any, items: Tensor) -> Tensor:
        """Scores of ``users`` (B,) for ``items``: (n,) shared -> (B,n), or (B,n) per user -> (B,n).

        The default scores every item and gathers; models with an item-vector state override it.
        """
        scores = self.score_with_state(users, state)
        return scores[:, items] if items.ndim == 1 else torch.gather(scores, 1, items)

    def replace_items(self, items: ItemSide) -> None:
        """Permanently replace the stored item side (scaled with the clean scale of ``fit``)."""
        self._require_fitted()
        self._check_items(items, fitting=False)
        with torch.no_grad():
            self._store_items(self._prepare(items))
            self.refresh_item_cache_from(items)

    def refresh_item_cache_from(self, items: ItemSide) -> None:
        """Hook for models that cache item embeddings computed from non-stored inputs (DVBPR)."""

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise InvalidInput(f"{self.name} is not fitted (call fit or load)")

    def save(self, path: str | Path) -> Path:
        """Write ``path/state.pt`` (tensors only) and ``path/config.json``; returns the directory."""
        self._require_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save(state, out / STATE_FILE)
        meta = {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dims": self.dims,
            "config": self.config.model_dump(mode="json"),
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> Recommender:
        """Rebuild a saved model (``torch.load(weights_only=True)``); BadCheckpoint on a bad layout."""
        src = Path(path)
        if not (src / STATE_FILE).is_file() or not (src / CONFIG_FILE).is_file():
            raise NotFound(f"no saved recommender at {src} (needs {STATE_FILE} and {CONFIG_FILE})")
        try:
            meta = json.loads((src / CONFIG_FILE).read_text())
            klass = REGISTRY[meta["name"]]
            state = torch.load(src / STATE_FILE, map_location="cpu", weights_only=True)
        except (KeyError, ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
            raise BadCheckpoint(f"cannot read recommender at {src}: {exc}") from None
        if cls is not Recommender and klass is not cls:
            raise BadCheckpoint(f"{src} holds a {meta['name']} model, not {cls.name}")
        config = dict(meta["config"])
        if device is not None:
            config["device"] = device
        model = klass(meta["n_users"], meta["n_items"], config)
        model.dims = {k: int(v) for k, v in meta["dims"].items()}
        model._build(model.dims)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BadCheckpoint(f"state of {src} does not match a {meta['name']} model: {exc}") from None
        model.to(model.config.device)
        model.fitted = True
        model.eval()
        return model


def init_trunc_normal(t: Tensor, std: float = 0.01) -> Tensor:
    """TF-style truncated normal (cut at 2 sd), the study's initialiser; uses the global (seeded) RNG."""
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def embedding(n: int, k: int, std: float = 0.01) -> nn.Parameter:
    return nn.Parameter(init_trunc_normal(torch.empty(n, k), std))


def bpr_loss(x_pos: Tensor, x_neg: Tensor) -> Tensor:
    """Sum over the batch of softplus(-(x_ui - x_uj)) (the study sums, it does not average)."""
    return nn.functional.softplus(-(x_pos - x_neg)).sum()


def penalty(tensors: list[Tensor], form: str) -> Tensor:
    """'l2': sum of squared entries; 'study_sum': plain sum of entries (the study's quirk Q8)."""
    if form == "study_sum":
        return sum(t.sum() for t in tensors)
    return sum(t.pow(2).sum() for t in tensors)


def penalty_grad_(g: Tensor, x: Tensor, r: float, form: str) -> Tensor:
    """``g += r * d penalty([x], form) / dx`` in place (2 r x for 'l2', r for 'study_sum'); returns ``g``."""
    if not r:
        return g
    if form == "study_sum":
        return g.add_(r)
    return g.add_(x, alpha=2 * r)


def dot_items(user_vecs: Tensor, item_vecs: Tensor, bias: Tensor | None, items: Tensor) -> Tensor:
    """Scores of users (B,K) for ``items``: (n,) shared by all -> (B,n); (B,n) per user -> (B,n)."""
    if items.ndim == 1:
        s = user_vecs @ torch.index_select(item_vecs, 0, items).T
    else:
        s = (user_vecs[:, None, :] * item_vecs[items]).sum(-1)
    return s if bias is None else s + bias[items]


