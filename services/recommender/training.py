"""BPR training of every recommender: the loop, validation and early stopping, one or several seeds at once.

Two engines, chosen by the model:

* **Hand-gradient engine** (BPR-MF, VBPR, AMR, DeepStyle: models whose ``train_tables()`` is not
  None). Parameters of R replicates are stacked into tables (:mod:`services.recommender.optim`);
  each batch holds R x ``batch_size`` triples, one from each replicate's own sampler stream; the
  model writes its gradients (``bpr_grads``) and one optimiser step updates every replicate.
  Adagrad updates only the rows a batch touched (exact: Adagrad leaves gradient-free rows unchanged).
  With R = 1 this is an ordinary fit, and replicate r of a batched fit performs exactly the
  operations of a fit of its seed alone (see :func:`fit_models`).
* **Autograd engine** (ACF, DVBPR): ``batch_loss`` + ``backward`` + a torch optimiser, one model
  at a time (their attention / CNN forward dominates; stacking replicates would not pay).

Reproducible: parameters are initialised under ``torch.random.fork_rng`` seeded with the fit's
``seed`` and every replicate samples with its own ``torch.Generator(seed)``, so two CPU fits with
the same seed give identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.allocator import retain_freed_memory
from services.recommender.config import RecConfig
from services.recommender.items import ItemSide
from services.recommender.metrics.accuracy import auc, hit_ratio, masked_ranks, n_candidates
from services.recommender.optim import make_table_optimizer
from services.recommender.pairs import last_per_user, pair_index, split_last
from services.recommender.sampling import BPRSampler, stack_batch

__all__ = ["BPRSampler", "FitReport", "Validator", "fit_models", "popularity_scores", "validation_metric"]


@dataclass
class FitReport:
    """What a fit did: epochs, the selected (best) epoch and its validation value, speed, history.

    ``train_seconds`` excludes validation; in a batched fit of R replicates it is the shared
    training time divided by R.
    """

    model: str
    epochs_run: int
    best_epoch: int
    best_val: float | None
    val_metric: str
    stopped_early: bool
    train_seconds: float
    triples_per_second: float
    n_triples: int
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------ validation
class Validator:
    """Mean AUC or HR@val_k of each validation user's last held-out item (training items excluded).

    Exact (``val_negatives=0``): the held-out item is ranked against every item. Sampled
    (``val_negatives=N < n_items``): against N items drawn once per fit (seeded) and shared by all
    users, of which those that are not training items of the user and not the held-out item count
    as candidates -- an unbiased AUC estimate at N/I of the cost (HR@k is then among the sampled
    candidates). The pair index, users and candidates are prepared once per fit.
    """

    def __init__(self, fit_train: Interactions, valid: Interactions, config: RecConfig, device: torch.device):
        users_np, items_np = last_per_user(valid)
        self.users = torch.from_numpy(users_np).to(device)
        self.items = torch.from_numpy(items_np).to(device)
        self.exclude = pair_index(fit_train, device)
        self.metric, self.k = config.val_metric, config.val_k
        n_items = fit_train.n_items
        self.negatives: Tensor | None = None
        n_neg = config.val_negatives or 0
        if 0 < n_neg < n_items - 1:
            gen = torch.Generator().manual_seed(config.seed)
            self.negatives = torch.randperm(n_items, generator=gen)[:n_neg].to(device)
            self.candidates = ~self.exclude.contains(self.users[:, None], self.negatives[None, :])
            self.candidates &= self.negatives[None, :] != self.items[:, None]
            self.n_cand = self.candidates.sum(1)
        else:
            self.n_cand = n_candidates(self.exclude, self.users, self.items, n_items)

    def __call__(self, model: Any) -> float:
        state = model.item_state(None)
        step = model.config.score_batch
        ranks = torch.empty_like(self.users)
        for s in range(0, self.users.numel(), step):
            users, items = self.users[s : s + step], self.items[s : s + step]
            if self.negatives is None:
                ranks[s : s + step] = masked_ranks(model.score_with_state(users, state), users, items, self.exclude)
            else:
                neg = model.score_items(users, state, self.negatives)
                test = model.score_items(users, state, items[:, None])
                ranks[s : s + step] = ((neg >= test) & self.candidates[s : s + step]).sum(1)
        if self.metric == "hr":
            return float(hit_ratio(ranks, self.k).mean())
        return float(auc(ranks, self.n_cand).mean())


def validation_metric(model: Any, fit_train: Interactions, valid: Interactions, config: RecConfig) -> float:
    """One-off validation value of ``model`` (see :class:`Validator`)."""
    return Validator(fit_train, valid, config, model.device)(model)


@dataclass
class _Selection:
    """Early-stopping state of one replicate."""

    best_val: float | None = None
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    bad: int = 0
    stopped: bool = False
    epochs_run: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, model: Any, epoch: int, val: float) -> None:
        if epoch < model.first_selectable_epoch:
            return
        if self.best_val is None or val > self.best_val:
            self.best_val, self.best_epoch, self.bad = val, epoch, 0
            # parameters only: buffers (item inputs, histories) do not change while training
            self.best_state = {k: v.detach().clone() for k, v in model.named_parameters()}
        else:
            self.bad += 1


# ------------------------------------------------------------------------------------ the loops
def fit_models(
    models: list[Any],
    train: Interactions,
    items: ItemSide | None,
    valid: Interactions | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[FitReport]:
    """Fit ``models`` from scratch -> one FitReport each.

    ``models``: unfitted instances of one class whose configs differ at most in ``seed`` (replicates).
    Hand-gradient models train as one stacked model: replicate r runs the arithmetic of a fit of its
    seed alone (same initial weights, same sampler stream, same per-row operations, the visual
    projections by one matmul per replicate), so its weights equal that fit's up to float rounding:
    vectorised kernels treat the last elements of a tensor through scalar code, and a replicate's
    rows sit at other positions of the stacked tensors (max |dw| <= 1e-6 after 4 epochs in the
    tests, often 0). Autograd models (ACF, DVBPR) are fitted one after the other.

    Validation: ``valid`` if given, else (when early stopping is on) the last training interaction
    of each user with >= 2 of them is held out and not trained on. ``progress`` gets
    ``{epoch, loss, val_metric}`` per epoch (plus ``replicate`` when there are several).
    """
    retain_freed_memory()
    lead = models[0]
    config = lead.config
    for m in models[1:]:
        if type(m) is not type(lead) or m.config.model_copy(update={"seed": config.seed}) != config:
            raise InvalidInput("replicates must share the model class and every setting but the seed")
    if config.patience > 0 and valid is None:
        fit_train, valid = split_last(train)
        if len(valid) == 0:
            fit_train, valid = train, None
    else:
        fit_train = train
    if lead.train_tables() is not None:
        return _fit_stacked(models, fit_train, items, valid, progress)
    return [_fit_autograd(m, fit_train, items, valid, progress if len(models) == 1 else _tagged(progress, r))
            for r, m in enumerate(models)]


def _tagged(progress: Callable[[dict[str, Any]], None] | None, r: int) -> Callable[[dict[str, Any]], None] | None:
    if progress is None:
        return None
    return lambda record: progress({**record, "replicate": r})


def _setup(model: Any, items: ItemSide | None, fit_train: Interactions) -> None:
    """Initialise ``model`` under its own seed, leaving the caller's global RNG as it was."""
    dev = torch.device(model.config.device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(model.config.seed)
        model.setup(items, fit_train)


def _report(model: Any, sel: _Selection, valid: Interactions | None, seconds: float, n_triples: int) -> FitReport:
    return FitReport(
        model=model.name,
        epochs_run=sel.epochs_run,
        best_epoch=sel.best_epoch if sel.best_state is not None else sel.epochs_run,
        best_val=sel.best_val,
        val_metric=model.config.val_metric if valid is not None else "none",
        stopped_early=sel.stopped,
        train_seconds=seconds,
        triples_per_second=n_triples / seconds if seconds > 0 else float("nan"),
        n_triples=n_triples,
        history=sel.history,
        config=model.config.model_dump(mode="json"),
    )


def _end_of_epoch(model: Any, sel: _Selection, validator: Validator | None, epoch: int, loss: float,
                  progress: Callable[[dict[str, Any]], None] | None) -> None:
    config = model.config
    record: dict[str, Any] = {"epoch": epoch, "loss": loss, "val_metric": None}
    if validator is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
        model.refresh_item_cache()
        record["val_metric"] = validator(model)
        sel.update(model, epoch, record["val_metric"])
    sel.history.append(record)
    sel.epochs_run = epoch
    if progress is not None:
        progress(dict(record))
    if config.patience > 0 and sel.bad >= config.patience:
        sel.stopped = True


def _finish(model: Any, sel: _Selection) -> None:
    if sel.best_state is not None:
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.copy_(sel.best_state[k])
    model.refresh_item_cache()
    model.eval()


def _fit_stacked(models: list[Any], fit_train: Interactions, items: ItemSide | None, valid: Interactions | None,
                 progress: Callable[[dict[str, Any]], None] | None) -> list[FitReport]:
    lead, n_rep = models[0], len(models)
    config = lead.config
    for m in models:
        _setup(m, items, fit_train)
    for m in models[1:]:  # the clean item inputs are the same for every replicate: share one copy
        for name, buf in lead.named_buffers():
            if name.startswith("items_"):
                setattr(m, name, buf)
    gens = [torch.Generator().manual_seed(m.config.seed) for m in models]
    samplers = [BPRSampler(fit_train, config.batch_size, bool(config.drop_last), g) for g in gens]
    tables = lead.train_tables()
    missing = {n for n, _ in lead.named_parameters()} - set(tables)
    if missing:
        raise AssertionError(f"{lead.name}.train_tables() misses parameters {sorted(missing)}")
    W: dict[str, Tensor] = {}
    for name, (kind, _) in tables.items():
        params = [getattr(m, name) for m in models]
        W[name] = torch.stack([p.detach() for p in params]) if kind == "dense" else torch.cat([p.detach() for p in params])
        rows = params[0].shape[0]
        for r, p in enumerate(params):  # the models' parameters become views of the stacked tables
            p.data = W[name][r] if kind == "dense" else W[name][r * rows : (r + 1) * rows]
    row_tables = {name for name, (kind, _) in tables.items() if kind != "dense"}
    opt = make_table_optimizer(config.optimizer, W, {n: lr for n, (_, lr) in tables.items()}, row_tables)
    validators = [Validator(fit_train, valid, m.config, m.device) if valid is not None else None for m in models]
    selections = [_Selection() for _ in models]
    n_users, n_items, dev = lead.n_users, lead.n_items, lead.device
    train_time, n_per_epoch = 0.0, samplers[0].n_per_epoch
    for epoch in range(1, config.epochs + 1):
        active = [r for r in range(n_rep) if not selections[r].stopped]
        if not active:
            break
        for m in models:
            m.current_epoch = epoch
            m.train()
        t0 = time.perf_counter()
        arrays = [tuple(a.to(dev) for a in s.epoch_arrays()) for s in samplers]
        losses = torch.zeros(n_rep, dtype=torch.float64, device=dev)
        with torch.no_grad():
            for s in range(0, n_per_epoch, config.batch_size):
                batch = stack_batch(arrays, s, min(s + config.batch_size, n_per_epoch), n_users, n_items, gens)
                loss, touched = lead.bpr_grads(W, opt.grad, batch)
                opt.step(touched)
                losses += loss
        train_time += time.perf_counter() - t0
        mean_loss = (losses / max(n_per_epoch, 1)).tolist()
        for r in active:
            tag = progress if n_rep == 1 else _tagged(progress, r)
            _end_of_epoch(models[r], selections[r], validators[r], epoch, mean_loss[r], tag)
    reports = []
    for m, sel in zip(models, selections, strict=True):
        _finish(m, sel)
        for name in tables:  # own compact storage again (a saved view would carry the whole stack)
            p = getattr(m, name)
            p.data = p.data.clone()
        reports.append(_report(m, sel, valid, train_time / n_rep, sel.epochs_run * n_per_epoch))
    return reports


def make_optimizer(model: Any, config: RecConfig) -> torch.optim.Optimizer:
    groups = model.param_groups()
    if config.optimizer == "adagrad":
        # TF1's Adagrad (the study's) starts its accumulator at 0.1, torch's at 0
        return torch.optim.Adagrad(groups, initial_accumulator_value=0.1)
    return torch.optim.Adam(groups)


def _fit_autograd(model: Any, fit_train: Interactions, items: ItemSide | None, valid: Interactions | None,
                  progress: Callable[[dict[str, Any]], None] | None) -> FitReport:
    config = model.config
    dev = torch.device(config.device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)  # dropout draws from the global RNG during training too
        model.setup(items, fit_train)
        gen = torch.Generator().manual_seed(config.seed)
        sampler = BPRSampler(fit_train, config.batch_size, bool(config.drop_last), gen, model.sample_by_user)
        optimizer = make_optimizer(model, config)
        validator = Validator(fit_train, valid, config, model.device) if valid is not None else None
        sel, train_time, dev = _Selection(), 0.0, model.device
        for epoch in range(1, config.epochs + 1):
            model.current_epoch = epoch
            model.train()
            t0 = time.perf_counter()
            total, n = 0.0, 0
            for u, i, j in sampler.epoch():
                u, i, j = u.to(dev), i.to(dev), j.to(dev)
                optimizer.zero_grad(set_to_none=True)
                loss = model.batch_loss(u, i, j)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                n += u.numel()
            train_time += time.perf_counter() - t0
            _end_of_epoch(model, sel, validator, epoch, total / max(n, 1), progress)
            if sel.stopped:
                break
        _finish(model, sel)
    return _report(model, sel, valid, train_time, sel.epochs_run * sampler.n_per_epoch)


def popularity_scores(train: Interactions) -> np.ndarray:
    """Item popularity (I,) -- the non-personalised baseline every model must beat."""
    return np.bincount(train.item, minlength=train.n_items).astype(np.float32)
