"""``/v1/models``: train a recommender as a job (the pipeline's ``train`` step on stored artifacts).

Follow the job with ``GET /v1/jobs/{job_id}``; the trained model is then served by the recommender
service (``/v1/recommender/models/{key}/...``) under the key this route returns at once. The dataset
and features named must be the caller's (:mod:`advrec.pipeline.owners`; another key's answer 404), and
the model becomes the caller's once trained.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from advrec.pipeline import owners
from advrec.pipeline.training_job import submit_training
from advrec_common.errors import NotFound
from advrec_common.http import error_responses
from advrec_common.schemas import TrainJob, TrainRequest
from advrec_common.settings import Settings
from advrec_common.store import ArtifactStore
from gateway.auth import Caller, require_api_key
from gateway.deps import get_app_settings

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)],
                   responses=error_responses(400, 401, 403, 404, 422, 429, 503))


@router.post("", response_model=TrainJob, status_code=202,
             summary="Train a recommender on a stored dataset (+ features) as a job; returns the model's key at once")
def train_model(req: TrainRequest, settings: Settings = Depends(get_app_settings),
                caller: Caller = Depends(require_api_key)) -> TrainJob:
    store = ArtifactStore(settings.store_dir)
    for field in ("dataset", "features"):  # another key's artifact is as unknown as a missing one (which
        key = getattr(req, field)          # plan_training reports after the config's problems)
        if key is not None and store.has(key) and not caller.admin and not owners.owns(settings.home, key, caller.owner):
            raise NotFound(f"{field}: {key} is not in the store")
    return submit_training(store, settings, req, owner=caller.owner)
