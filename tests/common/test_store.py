"""The artifact store: stable content keys, atomic writes, reuse."""

from __future__ import annotations

import numpy as np
import pytest

from advrec_common.errors import InvalidInput, NotFound
from advrec_common.store import ArtifactStore, artifact_key


def test_key_is_stable_and_order_independent():
    a = artifact_key("step", {"b": 1, "a": [1, 2.5, "x"]}, ["k1"], version="1")
    b = artifact_key("step", {"a": (1, 2.5, "x"), "b": 1}, ["k1"], version="1")
    assert a == b and len(a) == 64


@pytest.mark.parametrize(
    "change",
    [
        dict(step="other"),
        dict(params={"a": [1, 2.5, "y"], "b": 1}),
        dict(inputs=["k2"]),
        dict(version="2"),
    ],
)
def test_key_changes_with_every_input(change):
    base = dict(step="step", params={"a": [1, 2.5, "x"], "b": 1}, inputs=["k1"], version="1")
    assert artifact_key(**base) != artifact_key(**{**base, **change})


def test_nan_params_rejected():
    with pytest.raises(InvalidInput):
        artifact_key("s", {"eps": float("nan")})


def test_round_trip_and_reuse(store: ArtifactStore):
    key = artifact_key("features", {"x": 1})
    assert not store.has(key)
    with store.writing(key, {"step": "features"}) as d:
        np.save(d / "features.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert store.has(key)
    np.testing.assert_array_equal(np.load(store.open(key) / "features.npy"), np.arange(6).reshape(2, 3))
    first = (store.open(key) / "features.npy").stat().st_mtime_ns
    with store.writing(key) as d:  # another worker computed it meanwhile: the stored copy wins
        np.save(d / "features.npy", np.zeros((2, 3), dtype=np.float32))
    assert (store.open(key) / "features.npy").stat().st_mtime_ns == first
    assert store.meta(key)["step"] == "features"
    assert key in store.keys()


def test_failed_write_leaves_nothing(store: ArtifactStore):
    key = artifact_key("boom", {})
    with pytest.raises(RuntimeError):
        with store.writing(key) as d:
            (d / "partial.bin").write_bytes(b"half")
            raise RuntimeError("crash mid-step")
    assert not store.has(key)
    assert not any((store.root / "tmp").iterdir())
    with pytest.raises(NotFound):
        store.open(key)


def test_bad_keys_rejected(store: ArtifactStore):
    for bad in ["../../etc/passwd", "abc", "g" * 64]:
        with pytest.raises(InvalidInput):
            store.path(bad)
