"""BPR negative sampling: seeded (u, i, j) triples over the distinct training pairs, vectorised.

For each (u, i) training pair one item j is drawn uniformly from the *warm* items (seen in
training; the study never samples cold-start items) and redrawn, in tensors, while (u, j) is a
training pair (a bitset or ``searchsorted`` lookup, :class:`PairIndex`); only the draws that hit a
positive are redrawn. Pairs are shuffled every epoch with the sampler's own ``torch.Generator``, so
each replicate of a batched fit has its own stream, identical to the stream of a fit of that seed alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.pairs import pair_index

MAX_RESAMPLE_ROUNDS = 1000


class BPRSampler:
    """Seeded (u, i, j) triples over the distinct training pairs of ``train``."""

    def __init__(self, train: Interactions, batch_size: int, drop_last: bool, generator: torch.Generator,
                 group_by_user: bool = False):
        self.index = pair_index(train)
        self.n_items = train.n_items
        self.users, self.items = self.index.users, self.index.items
        self.warm = torch.unique(self.items)
        full = self.index.counts(torch.arange(train.n_users)) >= self.warm.numel()
        if bool(full.any()):
            raise InvalidInput(f"{int(full.sum())} user(s) interacted with every item: no negative exists")
        self.batch_size, self.drop_last, self.gen = batch_size, drop_last, generator
        self.group_by_user = group_by_user
        self.n_users = train.n_users

    def __len__(self) -> int:
        return int(self.users.numel())

    @property
    def n_per_epoch(self) -> int:
        """Triples used per epoch (the last short batch dropped if asked and a full batch exists)."""
        n = len(self)
        return (n // self.batch_size) * self.batch_size if self.drop_last and n >= self.batch_size else n

    def negatives(self, users: Tensor) -> Tensor:
        """One uniform warm item per user that is not among the user's training items."""
        n_warm = self.warm.numel()
        j = torch.index_select(self.warm, 0, torch.randint(n_warm, users.shape, generator=self.gen))
        bad = self.index.contains_keys(users * self.n_items + j).nonzero().squeeze(1)
        for _ in range(MAX_RESAMPLE_ROUNDS):
            if bad.numel() == 0:
                return j
            redraw = torch.index_select(self.warm, 0, torch.randint(n_warm, bad.shape, generator=self.gen))
            j[bad] = redraw
            bad = bad[self.index.contains_keys(torch.index_select(users, 0, bad) * self.n_items + redraw)]
        raise RuntimeError("negative sampling did not converge")  # impossible unless a user owns ~all items

    def epoch_arrays(self) -> tuple[Tensor, Tensor, Tensor]:
        """One epoch's shuffled (users, positives, negatives), each (n_per_epoch,) int64.

        ``group_by_user``: users are shuffled and each user's pairs stay together (the study's
        ACF/DVBPR sampling; a batch then holds few users, so per-user work such as ACF's attention
        is done once per user and batch).
        """
        perm = torch.randperm(len(self), generator=self.gen)
        if self.group_by_user:
            user_rank = torch.argsort(torch.randperm(self.n_users, generator=self.gen))
            perm = perm[torch.argsort(user_rank[self.users[perm]], stable=True)]
        u, i = torch.index_select(self.users, 0, perm), torch.index_select(self.items, 0, perm)
        j = self.negatives(u)
        stop = self.n_per_epoch
        return u[:stop], i[:stop], j[:stop]

    def epoch(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Shuffled batches (users, positives, negatives) of one epoch (see :meth:`epoch_arrays`)."""
        u, i, j = self.epoch_arrays()
        for s in range(0, u.numel(), self.batch_size):
            yield u[s : s + self.batch_size], i[s : s + self.batch_size], j[s : s + self.batch_size]


@dataclass
class Batch:
    """One training batch of R replicates x B triples, flattened replicate-major to (R*B,).

    ``users``/``pos``/``neg`` are the raw indices; ``u``/``i``/``j`` the same shifted into the stacked
    tables of :mod:`services.recommender.optim` (replicate r's rows start at ``r * n_users`` /
    ``r * n_items``). ``generators``: each replicate's sampler generator (for random directions).
    """

    users: Tensor
    pos: Tensor
    neg: Tensor
    u: Tensor
    i: Tensor
    j: Tensor
    n_rep: int
    size: int
    generators: list[torch.Generator]


def stack_batch(arrays: list[tuple[Tensor, Tensor, Tensor]], start: int, stop: int, n_users: int, n_items: int,
                generators: list[torch.Generator]) -> Batch:
    """The triples [start, stop) of each replicate's epoch arrays as one flat :class:`Batch`."""
    if len(arrays) == 1:
        users, pos, neg = (a[start:stop] for a in arrays[0])
        return Batch(users, pos, neg, users, pos, neg, 1, stop - start, generators)
    users, pos, neg = (torch.cat([a[k][start:stop] for a in arrays]) for k in range(3))
    rep = torch.arange(len(arrays), device=users.device).repeat_interleave(stop - start)
    return Batch(users, pos, neg, users + rep * n_users, pos + rep * n_items, neg + rep * n_items,
                 len(arrays), stop - start, generators)
