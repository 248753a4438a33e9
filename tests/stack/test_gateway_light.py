"""The gateway never imports torch: measured in a fresh interpreter that serves real requests
(submit, status, upload, training request, listing) and then looks at ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import API_KEY, TINY_SPEC

pytestmark = pytest.mark.stack

SCRIPT = textwrap.dedent("""
    import io, json, sys, zipfile
    from fastapi.testclient import TestClient
    from advrec_common.apikeys import hash_key
    from advrec_common.settings import Settings
    from gateway.app import create_app

    home, redis_url, key, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    app = create_app(Settings(home=home, redis_url=redis_url, api_key_hashes=[hash_key(key)], device="cpu"),
                     reconcile_on_start=True)
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d7"
                        "63f8cfc000000301010018dd8db00000000049454e44ae426082")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.writestr(f"images/i{i}.png", png)
        zf.writestr("interactions.csv", "user,item\\n" + "".join(f"u{u},i{(u + j) % 3}\\n" for u in range(4) for j in range(2)))
    statuses = {}
    with TestClient(app) as c:
        c.headers["X-API-Key"] = key
        statuses["readyz"] = c.get("/readyz").status_code  # 503: no worker consumes the queues here
        statuses["metrics"] = c.get("/metrics").status_code
        r = c.post("/v1/jobs", json=spec)
        statuses["submit"] = r.status_code
        statuses["status"] = c.get(f"/v1/jobs/{r.json()['id']}").status_code
        statuses["list"] = c.get("/v1/jobs").status_code
        statuses["upload"] = c.post("/v1/datasets", files={"archive": ("a.zip", buf.getvalue())}).status_code
        statuses["train"] = c.post("/v1/models", json={"dataset": "0" * 64, "recommender": "vbpr"}).status_code
        statuses["cancel"] = c.delete(f"/v1/jobs/{r.json()['id']}").status_code
    # peak RSS of this interpreter (VmHWM: ru_maxrss would include the forking parent's peak)
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"torch": "torch" in sys.modules, "statuses": statuses, "max_rss_mb": hwm / 1024}))
""")


def test_the_gateway_serves_requests_without_importing_torch(tmp_path, redis_url):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "home"), redis_url, API_KEY,
                          json.dumps(TINY_SPEC)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["statuses"] == {"readyz": 503, "metrics": 200, "submit": 202, "status": 200, "list": 200, "upload": 201,
                                 "train": 404, "cancel": 200}
    assert facts["torch"] is False, "the gateway imported torch"
    assert facts["max_rss_mb"] < 250, facts  # torch alone costs ~300 MB more
