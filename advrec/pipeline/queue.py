"""The Celery application: Redis broker, one queue per kind of work, reliability settings.

Queues: ``extract`` (extractor training, feature extraction; GPU), ``attack`` (attacks; GPU),
``recommend`` (recommender training and evaluation), ``orchestrate`` (the report). One task, :data:`RUN_STEP` (``advrec.run_step``), runs any DAG step; each
message is routed to the queue its step declares (``Step.queue``, :data:`~advrec.pipeline.dag.STEP_QUEUES`)
at send time. Orchestration tasks route by name (:data:`TASK_ROUTES`). A task body never decides
where it runs.

Reliability (see docs/stack.md): messages are acknowledged only after a task finished
(``task_acks_late``) and are re-queued when the worker process dies (``task_reject_on_worker_lost``);
a worker reserves one message at a time (``worker_prefetch_multiplier=1``) so a killed worker
strands at most one. The durable job database is the run record on disk, not Redis: every
worker's recovery loop (:mod:`advrec.pipeline.recovery`) re-drives any run the broker forgot.

Isolation: every key this app writes on Redis (queues, unacked messages, event and control
channels, results) starts with ``advrec:<namespace>:`` (kombu's and the result backend's
``global_keyprefix``), the namespace being :attr:`Settings.namespace` (a hash of the stack's home,
or ``ADVREC_STACK_ID``). Two stacks on one Redis database therefore never take each other's messages.

GPU workers: never touch CUDA in a prefork parent (the forked children cannot re-initialise
it); start GPU workers with ``--pool=solo`` (or ``--pool=threads --concurrency=1``), one per GPU.
Step functions touch CUDA only when they run, so the worker parent stays CUDA-free.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from celery import Celery

from advrec_common.settings import Settings, get_settings

# workers: idle OpenMP threads sleep instead of spinning (set before any step imports torch)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUEUES: tuple[str, ...] = ("extract", "attack", "recommend", "orchestrate")

# The one task that runs a DAG step; its messages carry the step's queue (see send_step).
RUN_STEP = "advrec.run_step"

# Orchestration tasks (start, reconcile) by name; step messages name their queue when sent.
TASK_ROUTES: dict[str, dict[str, str]] = {"orchestrate.*": {"queue": "orchestrate"}}

TASK_MODULES: tuple[str, ...] = ("advrec.pipeline.celery_executor",)

# Redis re-delivers an unacknowledged message only after this many seconds (a worker killed with
# SIGKILL never acknowledges). It must exceed the longest single step, or a step still running
# would be delivered a second time; the heartbeat-based reconciler recovers dead steps much
# sooner (RECONCILE_EVERY_S + STALE_AFTER_S), so a long timeout costs nothing.
VISIBILITY_TIMEOUT_S = 6 * 3600
# A running step writes a heartbeat into its run record this often; a step whose heartbeat is
# older than STALE_AFTER_S is considered dead (its worker was killed) and is re-enqueued.
HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0
# Every worker's recovery loop reconciles this often by default (Settings.reconcile_every_s).
RECONCILE_EVERY_S = 10.0
# Deliveries of one step before it is failed (poison-task guard for reject_on_worker_lost).
MAX_ATTEMPTS = 3


def key_prefix(namespace: str) -> str:
    """The prefix of every Redis key of the stack ``namespace``."""
    return f"advrec:{namespace}:"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (a plain dict, easy to inspect in tests)."""
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT_S, "global_keyprefix": key_prefix(settings.namespace)}
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "result_expires": 24 * 3600,  # results are conveniences; the run record is the database
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": "orchestrate",
        "task_routes": TASK_ROUTES,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app bound to ``settings.redis_url`` that knows every advrec task module."""
    settings = settings or get_settings()
    app = Celery("advrec", include=list(TASK_MODULES))
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=8)
def _celery_for(redis_url: str, namespace: str) -> Celery:
    return make_celery(Settings(redis_url=redis_url, stack_id=namespace))


def celery_for(settings: Settings) -> Celery:
    """A cached producer app for the broker and namespace of ``settings`` (the gateway and the CLI send with it)."""
    return _celery_for(settings.redis_url, settings.namespace)


# The app the workers run (``celery -A advrec.pipeline.queue worker``) and the tasks register on.
app = make_celery()


def _json_logs(**_: object) -> None:
    from advrec_common.observability import configure_logging

    configure_logging(get_settings().log_format)


if "log_format" in get_settings().model_fields_set:  # ADVREC_LOG_FORMAT given (the stack sets it): ours, not celery's
    from celery.signals import setup_logging

    setup_logging.connect(_json_logs, weak=False)
