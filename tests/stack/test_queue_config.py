"""The Celery configuration: reliability settings, JSON only, one step task routed by the step's queue."""

from __future__ import annotations

import pytest

from advrec.pipeline.queue import QUEUES, RUN_STEP, celery_config, make_celery
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
def test_the_one_step_task_goes_to_the_queue_its_step_names(queue):
    from advrec.pipeline.celery_executor import send_step

    sent: list[dict] = []

    class Producer:
        def send_task(self, name, args, task_id, **options):
            sent.append({"name": name, "args": args, **options})

    send_step(Producer(), "run-1", "attack/x/shard0", queue)
    assert sent == [{"name": RUN_STEP, "args": ["run-1", "attack/x/shard0"], "queue": queue}]
    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/5"))
    assert app.amqp.router.route({"queue": queue}, RUN_STEP)["queue"].name == queue


def test_every_dag_queue_is_consumed_and_orchestration_is_routed():
    from advrec.pipeline.dag import STEP_QUEUES

    assert set(STEP_QUEUES.values()) <= set(QUEUES)
    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/5"))
    assert app.amqp.router.route({}, "orchestrate.start")["queue"].name == "orchestrate"


def test_one_task_module_registers_every_task():
    import advrec.pipeline.celery_executor  # noqa: F401
    from advrec.pipeline.queue import app

    names = {n for n in app.tasks if not n.startswith("celery.")}
    assert names == {RUN_STEP, "orchestrate.start", "orchestrate.reconcile"}
