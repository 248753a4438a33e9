"""The Celery configuration: reliability settings, JSON only, routing by task name."""

from __future__ import annotations

import pytest

from advrec_common.queue import QUEUES, STEP_TASKS, celery_config, make_celery
from advrec_common.settings import Settings

pytestmark = pytest.mark.stack


def test_reliability_settings_and_broker_from_settings():
    conf = celery_config(Settings(redis_url="redis://example:6379/3"))
    assert conf["broker_url"] == conf["result_backend"] == "redis://example:6379/3"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["broker_transport_options"]["visibility_timeout"] >= 3600


@pytest.mark.parametrize("queue", QUEUES)
def test_every_step_task_is_routed_to_its_queue(queue):
    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/5"))
    route = app.amqp.router.route({}, STEP_TASKS[queue])
    assert route["queue"].name == queue


def test_every_dag_queue_has_a_step_task():
    from advrec.pipeline.dag import STEP_QUEUES

    assert set(STEP_QUEUES.values()) <= set(STEP_TASKS)


def test_task_modules_register_the_tasks():
    import advrec.pipeline.celery_executor  # noqa: F401
    import services.attacker.tasks  # noqa: F401
    import services.extractor.tasks  # noqa: F401
    import services.recommender.tasks  # noqa: F401
    from advrec_common.queue import app

    names = set(app.tasks)
    assert {"extractor.run_step", "attacker.run_step", "recommender.run_step", "orchestrate.run_step",
            "orchestrate.start", "orchestrate.reconcile"} <= names
