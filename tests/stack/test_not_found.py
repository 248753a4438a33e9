"""(f) Unknown job and dataset ids -> 404; artifact paths cannot escape the report folder."""

from __future__ import annotations

import pytest

from advrec_common.apikeys import owner_id

from .conftest import API_KEY

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("path", [
    "/v1/jobs/20990101-000000-nope-abcdef", "/v1/jobs/..", "/v1/jobs/nope/results", "/v1/jobs/nope/report",
    "/v1/jobs/nope/artifacts/results.json", "/v1/datasets/ds-0123456789abcdef", "/v1/datasets/..%2F..",
    "/v1/datasets/not-an-id", "/v1/recommenders/x",
])
def test_unknown_ids_are_404(gateway_client, path):
    r = gateway_client.get(path)
    assert r.status_code == 404, r.text


def test_cancel_unknown_job_is_404(gateway_client):
    assert gateway_client.delete("/v1/jobs/nope").status_code == 404


def test_artifact_path_escape_is_404(gateway_client, settings):
    from advrec.pipeline.record import RunRecord

    rec = RunRecord.create(settings.runs_dir, {"name": "x"}, executor="celery", owner=owner_id(API_KEY))
    rec.set_state("done")
    (rec.dir / "report").mkdir()
    (rec.dir / "report" / "results.json").write_text('{"ok": 1}')
    (rec.dir / "secret.txt").write_text("no")
    ok = gateway_client.get(f"/v1/jobs/{rec.run_id}/artifacts/results.json")
    assert ok.status_code == 200 and ok.json() == {"ok": 1}
    for bad in ("../secret.txt", "..%2Fsecret.txt", "../record.json", "/etc/passwd"):
        assert gateway_client.get(f"/v1/jobs/{rec.run_id}/artifacts/{bad}").status_code == 404, bad


def test_results_before_done_is_409(gateway_client, settings):
    from advrec.pipeline.record import RunRecord

    rec = RunRecord.create(settings.runs_dir, {"name": "x"}, executor="celery", owner=owner_id(API_KEY))
    r = gateway_client.get(f"/v1/jobs/{rec.run_id}/results")
    assert r.status_code == 409 and "queued" in r.json()["detail"]


def test_proxy_to_a_down_service_is_503(gateway_client, settings):
    # nothing listens on the configured service ports in this test
    r = gateway_client.get("/v1/attacker/healthz")
    assert r.status_code in (502, 503)
