"""Work, estimated and bounded before queueing (issue 22, item 1): admission prices the plan with the
progress bar's estimator (advrec.pipeline.work) and refuses a job above the key's work quota, or the
server's ceiling, with a 422 that names what to shrink; --validate and ?dry_run=true print the estimate."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from advrec.pipeline.dag import plan
from advrec.pipeline.preflight import preflight
from advrec.pipeline.spec import parse_spec
from advrec.pipeline.work import admission_facts, estimate, job_work

from .conftest import API_KEY, TINY_SPEC

pytestmark = pytest.mark.stack


def _nothing_recorded(settings) -> bool:
    runs = settings.runs_dir
    return not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


# what the staging trial got accepted (202) before: each is refused now, naming the part to shrink
@pytest.mark.parametrize(("change", "loc"), [
    ({"attacks": [{"method": "pgd", "eps": list(range(1, 33)), "steps": 100_000}]}, "attacks[0]"),
    ({"recommenders": [{"name": "vbpr", "config": {"epochs": 20_000}}], "replicates": 50}, "recommenders[0]"),
    # 2M users x 50k items: the promoted items' standings (every user against the catalog, before and after, per
    # replicate and cell) cost most, then AMR's training
    ({"dataset": {"kind": "demo", "n_items": 50_000, "n_users": 2_000_000}}, "promotion.attacks[0]"),
])
def test_a_job_above_the_work_quota_is_422_naming_what_to_shrink(gateway_client, settings, change, loc):
    r = gateway_client.post("/v1/jobs", json={"preset": "demo", **change})
    assert r.status_code == 422, r.text
    body = r.json()
    assert "estimated work" in body["detail"] and "quota_job_work_hours" in body["detail"]
    assert body["errors"][0]["loc"] == loc and "of the work" in body["errors"][0]["msg"]
    assert _nothing_recorded(settings)
    check = gateway_client.post("/v1/jobs?dry_run=true", json={"preset": "demo", **change})
    assert check.status_code == 422 and check.json()["errors"] == body["errors"]


def test_validate_and_dry_run_answer_the_estimate_and_queue_nothing(gateway_client, settings):
    v = gateway_client.post("/v1/jobs:validate", json=TINY_SPEC)
    d = gateway_client.post("/v1/jobs?dry_run=true", json=TINY_SPEC)
    assert v.status_code == d.status_code == 200
    assert v.json()["work"] == d.json()["work"]
    work = v.json()["work"]
    assert work["units"] > 0 and work["steps"] == v.json()["steps"]
    assert work["limit_cpu_hours"] == settings.quota_job_work_hours
    shares = [p["share"] for p in work["largest"]]
    assert shares == sorted(shares, reverse=True) and 0.9 < sum(shares) <= 1.001
    assert _nothing_recorded(settings)
    # the estimate is the progress bar's: the sum of estimate() over the plan's steps
    spec = parse_spec(TINY_SPEC)
    report = preflight(spec.model_dump(mode="json"), device="cpu")
    facts = admission_facts(spec, report.facts)
    steps = plan(spec, int(report.facts["n_items"]))
    assert work["units"] == round(sum(estimate(s, facts).units for s in steps))
    # a submitted job keeps its estimate
    job = gateway_client.post("/v1/jobs", json=TINY_SPEC)
    assert job.status_code == 202 and job.json()["work_estimate"]["units"] == work["units"]


def test_a_keys_work_quota_and_the_servers_ceiling(settings):
    from advrec_common.apikeys import hash_key
    from gateway.app import create_app

    spec = parse_spec(TINY_SPEC)
    report = preflight(spec.model_dump(mode="json"), device="cpu")
    hours = job_work(spec, plan(spec, int(report.facts["n_items"])), admission_facts(spec, report.facts)).cpu_hours
    big = "big-key-0123456789"
    tight = settings.model_copy(update={
        "quota_job_work_hours": hours / 2, "api_key_hashes": [*settings.api_key_hashes, hash_key(big)],
        "key_quotas": {hash_key(big): {"job_work_hours": hours * 10}}})
    with TestClient(create_app(tight, reconcile_on_start=False)) as c:
        r = c.post("/v1/jobs:validate", json=TINY_SPEC, headers={"X-API-Key": API_KEY})
        assert r.status_code == 422 and "quota_job_work_hours" in r.json()["detail"]
        ok = c.post("/v1/jobs:validate", json=TINY_SPEC, headers={"X-API-Key": big})
        assert ok.status_code == 200 and ok.json()["work"]["limit_cpu_hours"] == pytest.approx(hours * 10)
    capped = tight.model_copy(update={"max_job_work_hours": hours / 3})
    with TestClient(create_app(capped, reconcile_on_start=False)) as c:
        r = c.post("/v1/jobs:validate", json=TINY_SPEC, headers={"X-API-Key": big})
        assert r.status_code == 422 and "max_job_work_hours" in r.json()["detail"]


def test_the_cli_validate_verbs_print_the_estimate(gateway_client, monkeypatch, capsys):
    from advrec.cli import main
    from advrec.client import AdvrecClient

    assert main(["run", "demo", "--validate"]) == 0
    out = capsys.readouterr().out
    assert "estimated work:" in out and "CPU-hours" in out and "recommenders[" in out
    monkeypatch.setattr("advrec.commands.client.AdvrecClient", lambda url, key, **kw: AdvrecClient(
        url, key, transport=gateway_client._transport, retry_for=0))
    assert main(["submit", "demo", "--validate", "--server", "http://gw", "--api-key", API_KEY]) == 0
    out = capsys.readouterr().out
    assert "nothing was queued" in out and "estimated work:" in out and "this key's limit: 48" in out
