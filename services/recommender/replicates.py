"""Several seeds of one recommender configuration in one pass (the pipeline's R replicates per cell).

BPR-MF, VBPR, AMR and DeepStyle train as one batched model: parameters stacked with a leading
replicate dimension (rows of replicate r after those of r-1), one optimiser step for all seeds per
batch, each seed with its own initialisation and its own sampler stream. ACF and DVBPR are fitted
one seed after the other (their attention / CNN forward dominates an epoch, so stacking would not
pay); see :func:`services.recommender.training.fit_models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from advrec_common.datasets.types import Interactions
from advrec_common.errors import InvalidInput
from services.recommender.config import RecConfig, parse_config
from services.recommender.items import ItemSide
from services.recommender.models import RECOMMENDERS, FitReport, Recommender, build_recommender
from services.recommender.training import fit_models


def batched(name: str) -> bool:
    """True when replicates of recommender ``name`` train as one stacked model."""
    return RECOMMENDERS[name.lower()].train_tables is not Recommender.train_tables


def fit_replicates(
    name: str,
    n_users: int,
    n_items: int,
    config: RecConfig | dict[str, Any] | None,
    seeds: Sequence[int],
    train: Interactions,
    items: ItemSide | None = None,
    valid: Interactions | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[tuple[Recommender, FitReport]]:
    """One fitted model and its report per seed, in the order of ``seeds`` (``config.seed`` is ignored).

    Equal to ``build_recommender(name, n_users, n_items, {**config, "seed": s}).fit(train, items,
    valid=valid)`` for each seed: same initial weights, same sampler stream, same per-row arithmetic;
    the weights agree up to float rounding (a vectorised kernel treats a tensor's last elements
    through scalar code, and a replicate's rows sit elsewhere in the stacked tensors): max |dw|
    <= 1e-6 after 4 epochs and identical top-K lists in the tests, bit-identical in the benchmark.
    ACF/DVBPR replicates are separate fits, hence identical.
    Early stopping is decided per replicate. ``progress`` gets each replicate's epoch records with a
    ``replicate`` index. ``FitReport.train_seconds`` of a batched fit is the shared time / R.
    """
    if not seeds:
        raise InvalidInput("seeds must name at least one seed")
    base = parse_config(config)
    models = [build_recommender(name, n_users, n_items, base.model_copy(update={"seed": int(s)})) for s in seeds]
    models[0].check_fit_inputs(train, items, valid)
    reports = fit_models(models, train, items, valid, progress)
    return list(zip(models, reports, strict=True))
