"""Celery tasks of the recommender service (queue ``recommend``: recommender training, scenario selection and evaluation).

Thin wrappers: the work is :func:`advrec.pipeline.celery_executor.run_step`, which runs the
shared DAG step with :func:`advrec.pipeline.executor.execute_step`. Routing to the ``recommend``
queue is configuration (``advrec_common.queue.TASK_ROUTES``), not decided here.
"""

from __future__ import annotations

from advrec.pipeline import celery_executor
from advrec_common.queue import app


@app.task(name="recommender.run_step", bind=True)
def run_step(self, run_id: str, step_name: str) -> str:
    """Compute step ``step_name`` of run ``run_id``; returns done/cached/skipped/failed/cancelled."""
    return celery_executor.run_step(run_id, step_name, task_id=self.request.id, worker=self.request.hostname)
