"""measure_attack: classifier outcome, feature loss, perturbation size, PSNR/SSIM, LPIPS status."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from skimage.metrics import structural_similarity

from advrec_common.errors import InvalidInput
from services.attacker.measurements import measure_attack


def test_identical_images_measure_zero(random_model, images):
    m = measure_attack(random_model, images, images.clone(), 1)
    assert np.all(m.linf == 0) and np.all(m.l2 == 0) and np.all(m.feat_mse == 0)
    assert np.all(np.isinf(m.psnr)) and np.allclose(m.ssim, 1.0)
    assert not m.flipped.any()
    s = m.summary()
    assert s["psnr_mean"] is None and s["n_unchanged"] == len(images) and s["flip_rate"] == 0.0


def test_known_perturbation_sizes(random_model, images):
    delta = torch.zeros_like(images)
    delta[:, :, 0, 0] = 3 / 255  # one pixel per channel moved by 3 grey levels
    adv = (images + delta).clamp(0, 1)
    moved = (adv - images).flatten(1)
    m = measure_attack(random_model, images, adv, 0)
    assert np.allclose(m.linf, moved.abs().amax(1).numpy())
    assert np.allclose(m.l2, moved.norm(dim=1).numpy())
    mse = moved.pow(2).mean(1).numpy()
    finite = mse > 0
    assert np.allclose(m.psnr[finite], 10 * np.log10(1 / mse[finite]), rtol=1e-4)
    row = m.to_table()[0]
    assert row["linf_255"] == pytest.approx(row["linf"] * 255)


def test_ssim_matches_scikit_image_with_gaussian_window(random_model, images):
    g = torch.Generator().manual_seed(3)
    adv = (images + (torch.rand(images.shape, generator=g) - 0.5) * 0.1).clamp(0, 1)
    m = measure_attack(random_model, images, adv, None)
    ref = [
        structural_similarity(images[i].permute(1, 2, 0).numpy(), adv[i].permute(1, 2, 0).numpy(), channel_axis=2,
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for i in range(len(images))
    ]
    assert np.allclose(m.ssim, ref, atol=2e-2)
    assert m.success is None and m.summary()["success_rate"] is None


def test_success_flip_and_feature_loss(random_model, images):
    with torch.no_grad():
        clean_cls = random_model(images).argmax(1)
    other = images.flip(0)  # a different image: features move, classes may change
    with torch.no_grad():
        other_cls = random_model(other).argmax(1)
        f_clean, f_other = random_model.features(images), random_model.features(other)
    m = measure_attack(random_model, images, other, other_cls, clean_features=f_clean)
    assert np.all(m.success)  # "target" = what the other images are classified as
    assert np.array_equal(m.flipped, (other_cls != clean_cls).numpy())
    mse = (f_other - f_clean).pow(2).mean(1)
    assert np.allclose(m.feat_mse, mse.numpy(), rtol=1e-5) and np.allclose(m.feat_rmse, mse.sqrt().numpy(), rtol=1e-5)
    cos = 1 - torch.nn.functional.cosine_similarity(f_other, f_clean, dim=1)
    assert np.allclose(m.feat_cos, cos.clamp_min(0).numpy(), atol=1e-6)
    eligible = (clean_cls != other_cls).numpy()
    assert m.summary()["success_rate"] == (1.0 if eligible.any() else None)
    assert m.summary()["n_eligible"] == int(eligible.sum())


def test_success_rate_counts_only_images_not_already_the_target():
    """Hand-made: 4 images, target t; one was already t before the attack (not eligible)."""
    from services.attacker.artifacts import summarize_attack_table

    rows = [
        {"item": "a", "clean_is_target": True, "success": True, "float_success": True, "changed": True, "flipped": False},
        {"item": "b", "clean_is_target": False, "success": True, "float_success": True, "changed": True, "flipped": True},
        {"item": "c", "clean_is_target": False, "success": False, "float_success": True, "changed": True, "flipped": False},
        {"item": "d", "clean_is_target": False, "success": True, "float_success": True, "changed": False, "flipped": True},
    ]
    s = summarize_attack_table(rows, seconds=2.0, n_catalog=10)
    assert s["n_attacked"] == 4 and s["n_eligible"] == 3
    assert s["success"] == pytest.approx(200 / 3) and s["success_all"] == 75.0 and s["clean_target_rate"] == 25.0
    assert s["float_success"] == 100.0  # the float output succeeded where the delivered image did not (c)
    assert s["n_changed"] == 3 and s["all_zero"] is False
    erased = summarize_attack_table([{**r, "changed": False} for r in rows], 1.0, 10)
    assert erased["all_zero"] is True


def test_psnr_is_averaged_over_the_changed_images():
    """An unchanged image's PSNR is infinite: the cell's PSNR is the mean over the others (it was inf -> empty)."""
    from services.attacker.artifacts import summarize_attack_table

    rows = [{"item": "a", "psnr": 30.0, "changed": True}, {"item": "b", "psnr": 40.0, "changed": True},
            {"item": "c", "psnr": float("inf"), "changed": False}]
    assert summarize_attack_table(rows, 1.0, 3)["psnr"] == 35.0
    assert summarize_attack_table(rows[2:], 1.0, 3)["psnr"] is None  # nothing changed: no PSNR


def test_lpips_is_unavailable_without_weights_never_faked(random_model, images, tmp_path):
    m = measure_attack(random_model, images, images, 0)
    assert m.lpips is None and m.lpips_status.startswith("unavailable")
    m = measure_attack(random_model, images, images, 0, lpips_weights=tmp_path / "missing.pth")
    assert m.lpips is None and "not found" in m.lpips_status and m.summary()["lpips_mean"] is None
    (tmp_path / "junk.pth").write_bytes(b"<html>quota exceeded</html>")
    m = measure_attack(random_model, images, images, 0, lpips_weights=tmp_path / "junk.pth")
    assert m.lpips is None and m.lpips_status.startswith("unavailable: cannot load")


def test_lpips_with_a_local_backbone_file(random_model, images, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)  # a local file, no download
    noisy = (images + 0.2 * torch.rand_like(images)).clamp(0, 1)
    same = measure_attack(random_model, images, images, 0, lpips_weights=path)
    diff = measure_attack(random_model, images, noisy, 0, lpips_weights=path)
    assert same.lpips_status.startswith("ok") and np.allclose(same.lpips, 0, atol=1e-6)
    assert np.all(diff.lpips > 0) and math.isfinite(diff.summary()["lpips_mean"])


def test_measure_attack_rejects_bad_inputs(random_model, images):
    with pytest.raises(InvalidInput, match="must be equal"):
        measure_attack(random_model, images, images[:2], 0)
    with pytest.raises(InvalidInput, match="class index"):
        measure_attack(random_model, images, images, 99)
    with pytest.raises(InvalidInput, match="clean_features"):
        measure_attack(random_model, images, images, 0, clean_features=torch.zeros(len(images), 3))
