"""BPR training shared by every recommender: vectorised negative sampling, the loop, early stopping.

Negatives: for each (u, i) training pair one item j drawn uniformly from the *warm* items (seen in
training; the study never samples cold-start items) and redrawn, in tensors, while (u, j) is a
training pair (membership by ``searchsorted`` over sorted pair hashes). Pairs are de-duplicated and
shuffled every epoch with a seeded ``torch.Generator``; the whole fit runs under a forked, seeded
global RNG, so two fits with the same seed give identical weights on the CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.config import RecConfig
from services.recommender.metrics.accuracy import auc, hit_ratio, leave_one_out_ranks, n_candidates
from services.recommender.models.base import FitReport
from services.recommender.pairs import PairIndex, last_per_user, split_last

if TYPE_CHECKING:
    from services.recommender.items import ItemSide
    from services.recommender.models.base import Recommender

MAX_RESAMPLE_ROUNDS = 1000


class BPRSampler:
    """Seeded (u, i, j) triples over the distinct training pairs."""

    def __init__(self, train: Interactions, batch_size: int, drop_last: bool, generator: torch.Generator,
                 group_by_user: bool = False):
        self.index = PairIndex(train)
        self.n_items = train.n_items
        self.users, self.items = self.index.keys // train.n_items, self.index.items
        self.warm = torch.unique(self.items)
        full = self.index.counts(torch.arange(train.n_users)) >= self.warm.numel()
        if bool(full.any()):
            raise InvalidInput(f"{int(full.sum())} user(s) interacted with every item: no negative exists")
        self.batch_size, self.drop_last, self.gen = batch_size, drop_last, generator
        self.group_by_user = group_by_user
        self.n_users = train.n_users

    def __len__(self) -> int:
        return int(self.users.numel())

    def negatives(self, users: Tensor) -> Tensor:
        """One uniform warm item per user that is not among the user's training items."""
        j = self.warm[torch.randint(self.warm.numel(), users.shape, generator=self.gen)]
        for _ in range(MAX_RESAMPLE_ROUNDS):
            bad = self.index.contains(users, j)
            n_bad = int(bad.sum())
            if n_bad == 0:
                return j
            j[bad] = self.warm[torch.randint(self.warm.numel(), (n_bad,), generator=self.gen)]
        raise RuntimeError("negative sampling did not converge")  # impossible unless a user owns ~all items

    def epoch(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Shuffled batches (users, positives, negatives); the last short batch is dropped if asked
        (and if at least one full batch exists). ``group_by_user``: users are shuffled and each
        user's pairs stay together (the study's ACF/DVBPR sampling; a batch then holds few users,
        so per-user work such as ACF's attention is done once per user and batch)."""
        perm = torch.randperm(len(self), generator=self.gen)
        if self.group_by_user:
            user_rank = torch.argsort(torch.randperm(self.n_users, generator=self.gen))
            perm = perm[torch.argsort(user_rank[self.users[perm]], stable=True)]
        u, i = self.users[perm], self.items[perm]
        j = self.negatives(u)
        n = len(self)
        stop = (n // self.batch_size) * self.batch_size if self.drop_last and n >= self.batch_size else n
        for s in range(0, stop, self.batch_size):
            e = min(s + self.batch_size, stop)
            yield u[s:e], i[s:e], j[s:e]


def validation_metric(model: Recommender, fit_train: Interactions, valid: Interactions, config: RecConfig) -> float:
    """Mean AUC or HR@val_k of each validation user's last held-out item (training items excluded)."""
    users_np, items_np = last_per_user(valid)
    dev = model.device
    users, items = torch.from_numpy(users_np).to(dev), torch.from_numpy(items_np).to(dev)
    exclude = PairIndex(fit_train, dev)
    state = model.item_state(None)
    ranks = torch.cat([
        leave_one_out_ranks(model.score_with_state(users[s : s + 1024], state), items[s : s + 1024], exclude,
                            users[s : s + 1024])
        for s in range(0, users.numel(), 1024)
    ])
    if config.val_metric == "hr":
        return float(hit_ratio(ranks, config.val_k).mean())
    return float(auc(ranks, n_candidates(exclude, users, items, fit_train.n_items)).mean())


def make_optimizer(model: Recommender, config: RecConfig) -> torch.optim.Optimizer:
    groups = model.param_groups()
    if config.optimizer == "adagrad":
        # TF1's Adagrad (the study's) starts its accumulator at 0.1, torch's at 0
        return torch.optim.Adagrad(groups, initial_accumulator_value=0.1)
    return torch.optim.Adam(groups)


def train_bpr(
    model: Recommender,
    train: Interactions,
    items: ItemSide | None,
    config: RecConfig,
    valid: Interactions | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> FitReport:
    """Fit ``model`` from scratch; keeps the weights of the best validated epoch.

    Validation: ``valid`` if given, else (when early stopping is on) the last training
    interaction of each user with >= 2 of them is held out and not trained on.
    """
    if config.patience > 0 and valid is None:
        fit_train, valid = split_last(train)
        if len(valid) == 0:
            fit_train, valid = train, None
    else:
        fit_train = train
    devices = [torch.device(config.device)] if torch.device(config.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        model.setup(items, fit_train)
        gen = torch.Generator().manual_seed(config.seed)
        sampler = BPRSampler(fit_train, config.batch_size, bool(config.drop_last), gen, model.sample_by_user)
        optimizer = make_optimizer(model, config)
        history: list[dict[str, Any]] = []
        best_val, best_epoch, best_state, bad, stopped = None, 0, None, 0, False
        train_time, n_triples, epoch = 0.0, 0, 0
        dev = model.device
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
            n_triples += n
            record: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1), "val_metric": None}
            if valid is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                model.refresh_item_cache()
                val = validation_metric(model, fit_train, valid, config)
                record["val_metric"] = val
                if epoch >= model.first_selectable_epoch:
                    if best_val is None or val > best_val:
                        best_val, best_epoch, bad = val, epoch, 0
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        bad += 1
            history.append(record)
            if progress is not None:
                progress(dict(record))
            if config.patience > 0 and bad >= config.patience:
                stopped = True
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_epoch = epoch
        model.refresh_item_cache()
        model.eval()
    return FitReport(
        model=model.name,
        epochs_run=epoch,
        best_epoch=best_epoch,
        best_val=best_val,
        val_metric=config.val_metric if valid is not None else "none",
        stopped_early=stopped,
        train_seconds=train_time,
        triples_per_second=n_triples / train_time if train_time > 0 else float("nan"),
        n_triples=n_triples,
        history=history,
        config=config.model_dump(mode="json"),
    )


def popularity_scores(train: Interactions) -> np.ndarray:
    """Item popularity (I,) -- the non-personalised baseline every model must beat."""
    return np.bincount(train.item, minlength=train.n_items).astype(np.float32)
