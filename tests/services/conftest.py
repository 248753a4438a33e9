"""A tiny store built through the real pipeline steps (demo dataset, small_cnn extractor, VBPR), shared
by the service tests, and in-process clients of the three apps bound to it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.redis_server import redis_url as private_redis_url

N_ITEMS, N_USERS, SIZE = 30, 20, 32
INTERNAL_TOKEN = "internal-test-token"


@dataclass
class Tiny:
    home: Path
    settings: object
    store: object
    keys: dict[str, str]


def png_bytes(image: np.ndarray) -> bytes:
    """(H,W,3) uint8 -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()




@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    from advrec.pipeline.dag import Plan
    from advrec.pipeline.executor import execute_step
    from advrec.pipeline.spec import DatasetSpec
    from advrec_common.settings import Settings
    from advrec_common.store import ArtifactStore
    from advrec_common.vision.backbones import build_model
    from advrec_common.vision.model_file import save_model_file
    from services.extractor.artifacts import features_params

    home = tmp_path_factory.mktemp("advrec-home")
    # training jobs go to Celery: a broker DB of their own on the real Redis (flushed here)
    settings = Settings(home=home, device="cpu", redis_url=private_redis_url(9), internal_token=INTERNAL_TOKEN)
    store = ArtifactStore(settings.store_dir)
    torch.manual_seed(0)
    extractor = build_model("small_cnn", [f"class{i}" for i in range(5)])
    ckpt = save_model_file(extractor.eval(), home / "tiny_cnn.pt")

    plan = Plan()
    plan.add("dataset", "dataset", DatasetSpec(kind="demo", n_items=N_ITEMS, n_users=N_USERS, image_size=SIZE,
                                                seed=0).model_dump(mode="json"))
    plan.add("extractor/tiny", "extractor", {"source": "checkpoint", "backbone": "small_cnn",
                                             "checkpoint": str(ckpt), "layout": "advrec"})
    plan.add("features/tiny", "features", features_params(None, False),
             {"dataset": "dataset", "extractor": "extractor/tiny"})
    plan.add("train/tiny/vbpr", "train",
             {"recommender": "vbpr", "config": {"k": 8, "epochs": 2, "batch_size": 64, "patience": 0}, "seed": 0,
              "max_k": 10},
             {"dataset": "dataset", "features": "features/tiny"})
    for step in plan:
        execute_step(step, plan, store, "cpu")
    keys = {s.name.split("/")[0]: s.key for s in plan}
    return Tiny(home=home, settings=settings, store=store, keys=keys)


def _client(module, tiny: Tiny) -> TestClient:
    from advrec_common.settings import get_settings

    app = module.create_app()
    app.dependency_overrides[get_settings] = lambda: tiny.settings
    client = TestClient(app)
    client.headers["X-Internal-Token"] = INTERNAL_TOKEN  # what the gateway's proxy sends
    return client


@pytest.fixture
def extractor_client(tiny):
    from services.extractor import app as module

    with _client(module, tiny) as client:
        yield client


@pytest.fixture
def attacker_client(tiny):
    from services.attacker import app as module

    with _client(module, tiny) as client:
        yield client


@pytest.fixture
def recommender_client(tiny):
    from services.recommender import app as module

    with _client(module, tiny) as client:
        yield client


def store_snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` (home) with its size: used to assert that a failed request wrote nothing."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
