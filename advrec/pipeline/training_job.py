"""A recommender training job: one ``train`` step over stored dataset/features, run by the Celery executor.

The plan reuses the evaluation DAG's step kind and parameters, so the trained model's key equals the
one a pipeline run with the same settings gets (and a stored model is reused, not retrained).
"""

from __future__ import annotations

import logging

from advrec.pipeline.dag import Plan
from advrec.pipeline.record import RunRecord
from advrec_common.errors import InvalidInput, NotFound, invalid
from advrec_common.schemas import TrainJob, TrainRequest
from advrec_common.settings import Settings
from advrec_common.store import ArtifactStore
from advrec_common.validation import validate_model
from services.recommender.config import RecConfig, config_problems
from services.recommender.kinds import RECOMMENDER_NEEDS, uses_extractor

log = logging.getLogger(__name__)


def _stored(store: ArtifactStore, key: str, kind: str, field: str) -> dict:
    try:
        meta = store.meta(key)
    except NotFound:
        raise NotFound(f"{field}: {kind} {key} is not in the store") from None
    if meta.get("kind") != kind:
        raise InvalidInput(f"{field}: {key} is a {meta.get('kind')!r} artifact, not {kind!r}")
    return meta


def plan_training(store: ArtifactStore, req: TrainRequest) -> Plan:
    """A plan of (stored dataset, stored features, train); the train key equals the pipeline's."""
    if req.recommender not in RECOMMENDER_NEEDS:
        raise NotFound(f"unknown recommender {req.recommender!r}; known: {sorted(RECOMMENDER_NEEDS)}")
    config = validate_model(RecConfig, req.config, root="config", what="invalid recommender config")
    if problems := config_problems(req.recommender, config):
        raise invalid([("config", m) for m in problems], "invalid recommender config")
    plan = Plan()
    _stored(store, req.dataset, "dataset", "dataset")
    plan.add_stored("dataset", "dataset", req.dataset)
    inputs = {"dataset": "dataset"}
    if uses_extractor(req.recommender):
        if req.features is None:
            raise InvalidInput(f"{req.recommender} needs a features artifact (field 'features')")
        _stored(store, req.features, "features", "features")
        n_items = store.meta(req.dataset).get("result", {}).get("n_items")
        n_feat = store.meta(req.features).get("result", {}).get("n")
        if n_items is not None and n_feat is not None and n_items != n_feat:
            raise InvalidInput(f"features has {n_feat} items, the dataset {n_items}: not the same catalog")
        inputs["features"] = plan.add_stored("features/job", "features", req.features)
    params = {"recommender": req.recommender, "config": config.model_dump(mode="json", exclude_unset=True),
              "seed": req.seed, "max_k": req.max_k}
    plan.add("train/job/" + req.recommender, "train", params, inputs)
    return plan


def submit_training(store: ArtifactStore, settings: Settings, req: TrainRequest, owner: str | None = None) -> TrainJob:
    """Record a training job and hand it to the Celery executor (queue ``recommend``).

    The record is the acceptance: if the broker is down the job stays ``queued`` and the reconciler
    enqueues it once Redis answers again. A model already stored is not recomputed.
    """
    from advrec.pipeline.jobs import advance

    plan = plan_training(store, req)
    step = next(s for s in plan if s.kind == "train")
    record = RunRecord.create(settings.runs_dir, {"name": f"train-{req.recommender}",
                                                  "train": req.model_dump(mode="json")}, executor="celery",
                               owner=owner)
    record.set_plan(plan.to_json())
    try:
        state = advance(record.run_id, settings)
    except Exception as exc:  # broker unreachable: the reconciler will enqueue it
        log.warning("training job %s recorded but not enqueued (%s)", record.run_id, exc)
        state = "queued"
    return TrainJob(job_id=record.run_id, state=state, model=step.key)
