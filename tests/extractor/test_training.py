"""Training: configs, the stratified split, and real small trainings (standard, PGD-AT, Free-AT)."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch

from advrec_common.datasets.demo import make_product_images
from advrec_common.errors import InvalidInput
from services.extractor.training import (
    TrainConfig,
    TrainReport,
    evaluate_robustness,
    stratified_split,
    train_extractor,
)

COMMON = {"batch_size": 32, "lr": 0.05, "eps": 8, "eval_steps": 5, "seed": 0}


@pytest.fixture(scope="module")
def products():
    """200 procedural product images (10 classes) at 32x32."""
    images, labels, names, _ = make_product_images(20, size=32, seed=0)
    return images, labels, names


@pytest.fixture(scope="module")
def trained(products):
    """The three methods at the same nominal budget (6 epochs) on the same data."""
    torch.set_num_threads(1)
    images, labels, names = products
    out = {}
    for method, extra in {"standard": {}, "pgd_at": {"pgd_steps": 2}, "free_at": {"replays": 4}}.items():
        out[method] = train_extractor(images, labels, names, "tiny_cnn", TrainConfig(method=method, epochs=6,
                                                                                     **COMMON, **extra))
    return out


def test_config_defaults_follow_the_papers():
    cfg = TrainConfig(method="pgd_at", eps=8, pgd_steps=5)
    assert cfg.step_size == pytest.approx(2.5 * 8 / 5) and cfg.eval_eps == 8 and cfg.eval_steps == 10
    assert cfg.replays == 4 and cfg.random_start is True
    assert TrainConfig(eps=4, eval_eps=8).eval_eps == 8
    for bad in ({"eps": -1}, {"method": "trades"}, {"epochs": 0}, {"lr": 0}, {"unknown": 1}):
        with pytest.raises(pydantic.ValidationError):
            TrainConfig(**bad)


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = np.repeat(np.arange(4), [10, 20, 5, 2])
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == labels.size
    assert np.bincount(labels[va], minlength=4).tolist() == [2, 4, 1, 1]
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], va)
    with pytest.raises(InvalidInput):
        stratified_split(labels, 1.0, seed=0)


def test_pgd_at_is_more_robust_than_standard(trained):
    std_model, std = trained["standard"]
    pgd_model, pgd = trained["pgd_at"]
    assert std.clean_accuracy > 0.5  # it learned the task
    assert pgd.robust_accuracy > std.robust_accuracy + 0.1
    assert std.robust_accuracy < std.clean_accuracy
    assert pgd.method == "pgd_at" and pgd.n_train == 160 and pgd.n_val == 40
    assert pgd.history[-1].loss < pgd.history[0].loss
    assert not std_model.training and not pgd_model.training


def test_free_at_trains_replays_and_reports(trained):
    model, report = trained["free_at"]
    assert report.passes == math.ceil(6 / 4)
    assert report.optimizer_steps == report.passes * math.ceil(160 / 32) * 4
    assert report.clean_accuracy > 0.3 and report.robust_accuracy > trained["standard"][1].robust_accuracy
    assert 0 <= report.robust_accuracy <= report.clean_accuracy + 1e-9 <= 1 + 1e-9
    assert report.config.method == "free_at" and report.train_seconds > 0
    assert TrainReport.model_validate_json(report.model_dump_json()) == report


def test_evaluate_robustness_reports_clean_accuracy_and_eps0(trained, products):
    images, labels, _ = products
    model, report = trained["standard"]
    _, val = stratified_split(labels, 0.2, seed=0)
    again = evaluate_robustness(model, images[val], labels[val], eps=8, steps=5)
    assert again["clean_accuracy"] == pytest.approx(report.clean_accuracy)
    assert again["robust_accuracy"] == pytest.approx(report.robust_accuracy)  # seeded attack
    zero = evaluate_robustness(model, images[val], labels[val], eps=0, steps=1)
    assert zero["robust_accuracy"] == zero["clean_accuracy"] == pytest.approx(report.clean_accuracy)


def test_training_is_deterministic_on_cpu(products):
    images, labels, names = products
    cfg = TrainConfig(method="pgd_at", epochs=1, pgd_steps=1, **COMMON)
    a, ra = train_extractor(images[:60], labels[:60], names, "tiny_cnn", cfg)
    b, rb = train_extractor(images[:60], labels[:60], names, "tiny_cnn", cfg)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    assert ra.history[0].loss == rb.history[0].loss
    c, _ = train_extractor(images[:60], labels[:60], names, "tiny_cnn", cfg.model_copy(update={"seed": 1}))
    assert not torch.equal(a.head.weight, c.head.weight)
    # the caller's thread count does not enter: CPU training runs on one thread, and restores the count
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        d, _ = train_extractor(images[:60], labels[:60], names, "tiny_cnn", cfg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for (k, v), (_, w) in zip(a.state_dict().items(), d.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_bad_training_input_is_rejected(products):
    images, labels, names = products
    cfg = TrainConfig(epochs=1)
    with pytest.raises(InvalidInput, match="labels"):
        train_extractor(images, labels + 10, names, "tiny_cnn", cfg)
    with pytest.raises(InvalidInput, match="uint8"):
        train_extractor(images.astype(np.float32), labels, names, "tiny_cnn", cfg)
    with pytest.raises(InvalidInput, match="val_fraction"):
        train_extractor(images, labels, names, "tiny_cnn", cfg, val_fraction=0)
