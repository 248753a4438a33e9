"""Run a block with a given number of torch CPU threads, restoring the caller's count after it.

Training on the CPU sums weight gradients (and matmul reductions) in chunks split across threads,
so the same seed gives other models at another thread count. Code whose result must not depend on
the caller's setting (extractor training, the category head) runs under ``cpu_threads(1)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (torch imported on use)."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
