"""The defenses as modules: each transform on fixed images, BPDA's and EOT's gradient rules, the
detector's score, the composition with an ImageModel, the torch-free spec and the artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from advrec_common.errors import BadCheckpoint, InvalidInput
from advrec_common.validation import validate_model
from advrec_common.vision.backbones import build_model
from advrec_common.vision.defenses.artifact import load_defense, load_defense_artifact, write_defense_artifact
from advrec_common.vision.defenses.base import straight_through
from advrec_common.vision.defenses.bit_depth import BitDepth
from advrec_common.vision.defenses.defended import DefendedModel, defend
from advrec_common.vision.defenses.denoiser import Denoiser
from advrec_common.vision.defenses.detector import MARGIN, Detector
from advrec_common.vision.defenses.jpeg import Jpeg
from advrec_common.vision.defenses.median import Median, median_filter
from advrec_common.vision.defenses.registry import DEFENSES, build_defense
from advrec_common.vision.defenses.resize_pad import ResizePad
from advrec_common.vision.defenses.spec import DEFENSE_KINDS, DefenseSpec
from advrec_common.vision.model import ImageModel


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("tiny_cnn", [f"c{i}" for i in range(4)]).eval()


@pytest.fixture
def images():
    """5 random 8-bit images (N,3,32,32) in [0,1]."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (5, 3, 32, 32), generator=g).float() / 255.0


def _grey(levels: list[int]) -> torch.Tensor:
    """(1,3,1,len) image whose pixels are the given 8-bit grey levels."""
    return torch.tensor(levels, dtype=torch.float32).div(255.0).view(1, 1, 1, -1).repeat(1, 3, 1, 1)


# -- the transforms on fixed images ------------------------------------------------------------------
def test_bit_depth_on_known_levels():
    x = _grey([0, 42, 43, 127, 128, 212, 213, 255])
    # 1 bit: round(x) -- 127/255 < 0.5 < 128/255
    assert BitDepth(1).transform(x)[0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # 2 bits: levels 0, 1/3, 2/3, 1 with boundaries at 42.5, 127.5 and 212.5 grey levels
    got = (BitDepth(2).transform(x)[0, 0, 0] * 3).round().tolist()
    assert got == [0, 0, 1, 1, 2, 2, 3, 3]
    # 8 bits keep every 8-bit image exactly
    assert torch.equal(BitDepth(8).transform(x), x)


def test_median_removes_an_impulse_and_keeps_a_plus_of_a_block():
    impulse = torch.zeros(1, 3, 7, 7)
    impulse[..., 3, 3] = 1.0
    assert torch.equal(Median(3).transform(impulse), torch.zeros_like(impulse))
    block = torch.zeros(1, 3, 7, 7)
    block[..., 2:5, 2:5] = 1.0
    expected = torch.zeros(1, 3, 7, 7)
    for r, c in [(3, 3), (2, 3), (4, 3), (3, 2), (3, 4)]:  # 9 or 6 of 9 window pixels are ones; corners 4
        expected[..., r, c] = 1.0
    assert torch.equal(Median(3).transform(block), expected)


@pytest.mark.parametrize("window", [2, 3, 4, 5])
def test_median_follows_scipy_nearest_mode(images, window):
    from scipy.ndimage import median_filter as scipy_median

    ref = np.stack([[scipy_median(ch, size=window, mode="nearest") for ch in img] for img in images.numpy()])
    assert np.array_equal(median_filter(images, window).numpy(), ref)


def test_jpeg_round_trip_properties(images):
    from advrec_common.vision.defenses.jpeg import jpeg_roundtrip

    out = Jpeg(75).transform(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(out, (out * 255).round() / 255)  # decoded 8-bit
    assert not torch.equal(out, images)  # random noise is not a JPEG fixed point
    u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal((out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), jpeg_roundtrip(u8, 75))
    flat = torch.full((1, 3, 16, 16), 128 / 255)  # one colour in whole 8x8 blocks: JPEG keeps it
    assert (Jpeg(75).transform(flat) - flat).abs().max() <= 1 / 255 + 1e-6
    # higher quality, closer to the input
    smooth = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    errors = [float((Jpeg(q).transform(smooth) - smooth).abs().mean()) for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2]


def test_resize_pad_draws_a_side_and_an_offset_per_image():
    ones = torch.ones(40, 3, 32, 32)
    torch.manual_seed(0)
    out = ResizePad(min_scale=0.75).transform(ones)
    assert out.shape == ones.shape
    sides = []
    for img in out:
        rows, cols = img[0].sum(1) > 0, img[0].sum(0) > 0
        side = int(rows.sum())
        assert side == int(cols.sum()) and 24 <= side <= 32  # ceil(0.75 * 32) = 24
        assert torch.allclose(img[:, rows][:, :, cols], torch.ones(3, side, side))  # the image, all of it
        assert torch.equal(img[:, ~rows], torch.zeros_like(img[:, ~rows]))  # zeros elsewhere
        assert torch.equal(img[:, :, ~cols], torch.zeros_like(img[:, :, ~cols]))
        sides.append(side)
    assert len(set(sides)) > 3  # drawn, not fixed
    torch.manual_seed(0)
    assert torch.equal(ResizePad(min_scale=0.75).transform(ones), out)  # the global RNG decides


def test_an_untrained_denoiser_is_the_identity(images):
    assert torch.equal(Denoiser(width=8, depth=3).transform(images), images)


# -- gradient rules ----------------------------------------------------------------------------------
def test_straight_through_has_the_identity_gradient():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(2, 3, 4, 4)
    y = straight_through(x, torch.round)
    assert torch.equal(y, torch.round(x))
    (y * w).sum().backward()
    assert torch.equal(x.grad, w)


@pytest.mark.parametrize("defense", [BitDepth(3), Jpeg(50), Median(3)], ids=lambda d: d.kind)
def test_bpda_gradient_equals_the_identity_gradient_at_the_defended_image(model, images, defense):
    """d/dx L(model(g(x))) under BPDA = d/dz L(model(z)) at z = g(x): the identity's gradient through g."""
    target = torch.tensor([0, 1, 2, 3, 0])
    x = images.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(defend(model, defense, adaptive=True)(x), target)
    (bpda,) = torch.autograd.grad(loss, x)
    z = defense.transform(images).requires_grad_(True)
    (identity,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(z), target), z)
    assert torch.equal(bpda, identity)
    assert bpda.abs().sum() > 0
    # the deployed composition has no gradient to offer: the attacker that ignores the defense
    xd = images.clone().requires_grad_(True)
    assert torch.autograd.grad(defend(model, defense)(xd).sum(), xd, allow_unused=True) == (None,)


def test_denoiser_gradient_is_exact(model, images):
    torch.manual_seed(1)
    den = Denoiser(width=8, depth=3)
    torch.nn.init.normal_(den.residual[-1].weight, std=0.05)
    x = images.clone().requires_grad_(True)
    (through,) = torch.autograd.grad(defend(model, den, adaptive=True)(x)[:, 1].sum(), x)
    x2 = images.clone().requires_grad_(True)
    (direct,) = torch.autograd.grad(model(den(x2))[:, 1].sum(), x2)
    assert torch.allclose(through, direct, atol=1e-6) and through.abs().sum() > 0


def test_eot_averages_over_the_stated_draws(model, images):
    """The adaptive composition draws eot_draws transforms of every image per forward, in one pass of the
    model, and its outputs (and their gradient) are the mean over those draws."""
    defense = ResizePad(min_scale=0.75, eot_draws=12)
    drawn, through_model = [], []
    original = defense.transform
    defense.transform = lambda x: drawn.append(x.shape[0]) or original(x)  # count the draws
    hook = model.body.register_forward_hook(lambda m, i, o: through_model.append(i[0].shape[0]))
    n = images.shape[0]
    adaptive = defend(model, defense, adaptive=True)
    x = images.clone().requires_grad_(True)
    torch.manual_seed(5)
    out = adaptive.forward_all(x)
    assert drawn == [12 * n] and through_model == [12 * n]  # 12 draws per image, one forward
    drawn.clear()
    through_model.clear()
    defend(model, defense)(images)  # deployed: one draw per image
    assert drawn == [n] and through_model == [n]
    hook.remove()
    # the mean of the per-draw outputs, draw by draw with the same random numbers
    torch.manual_seed(5)
    per_draw = model.forward_all(original(images.repeat(12, 1, 1, 1)))
    assert torch.allclose(out.logits, per_draw.logits.view(12, n, -1).mean(0), atol=1e-6)
    assert torch.allclose(out.features, per_draw.features.view(12, n, -1).mean(0), atol=1e-6)
    # for a loss linear in the outputs, the gradient is the mean of the per-draw gradients
    (eot,) = torch.autograd.grad(out.logits[:, 2].sum(), x)
    torch.manual_seed(5)
    xs = images.repeat(12, 1, 1, 1).requires_grad_(True)
    (each,) = torch.autograd.grad(model(original(xs))[:, 2].sum(), xs)
    assert torch.allclose(eot, each.view(12, *images.shape).mean(0), atol=1e-6)


# -- the detector --------------------------------------------------------------------------------------
def test_detector_score_is_the_largest_softmax_shift_under_squeezing(model, images):
    det = Detector(bits=4, window=2, penalty=3.0, threshold=0.05)
    s = defend(model, det).screen(images)
    with torch.no_grad():
        p = model(images).softmax(1)
        shifts = [(model(sq).softmax(1) - p).abs().sum(1) for sq in (BitDepth(4).transform(images),
                                                                      median_filter(images, 2))]
    expected = torch.maximum(*shifts)
    assert torch.allclose(s.scores, expected, atol=1e-6)
    assert torch.equal(s.flagged, expected > 0.05)
    assert torch.allclose(s.output.logits, model(images).detach(), atol=1e-6)  # the image passes unchanged
    # the detector-aware penalty: weight * the score's excess over half the threshold
    assert torch.allclose(det.penalty(expected), 3.0 * (expected - MARGIN * 0.05).clamp_min(0))
    out = defend(model, det, adaptive=True).forward_all(images)
    assert torch.allclose(out.penalty, det.penalty(expected), atol=1e-5)
    assert defend(model, det, adaptive=True).penalised and not defend(model, det).penalised


def test_an_unfitted_detector_scores_but_does_not_flag(model, images):
    det = Detector()
    assert defend(model, det).screen(images, flags=False).scores.shape == (images.shape[0],)
    with pytest.raises(InvalidInput, match="no threshold"):
        defend(model, det).screen(images)


# -- the composition is an ImageModel ------------------------------------------------------------------
def test_a_defended_model_is_an_image_model_with_the_same_parts(model, images):
    from services.extractor.extraction import extract_features

    defended = defend(model, BitDepth(3))
    assert isinstance(defended, ImageModel) and isinstance(defended, DefendedModel)
    assert defended.body is model.body and defended.head is model.head
    assert defended.class_names == model.class_names and defended.feature_dim == model.feature_dim
    res = extract_features(defended, images, device="cpu")
    expected = model.features(BitDepth(3).transform(images)).detach().numpy()
    np.testing.assert_allclose(res.features, expected, rtol=1e-5, atol=1e-6)
    # the normalised-space convention of the study's attacks reaches the defense in pixel space
    z = model.normalize(images)
    assert torch.allclose(defended.forward_all(z, normalized=True).logits, defended(images), atol=1e-5)
    head = torch.nn.Linear(model.feature_dim, 2)
    other = defended.with_head(head, ["a", "b"])
    assert isinstance(other, DefendedModel) and other.defense is defended.defense and other.head is head
    assert torch.equal(defended.bare()(images), model(images))


# -- the spec ---------------------------------------------------------------------------------------
class _Ladder(BaseModel):
    defenses: list[DefenseSpec]


def test_every_kind_has_a_module_and_builds_from_its_defaults():
    assert set(DEFENSES) == set(DEFENSE_KINDS)
    for kind in DEFENSE_KINDS:
        spec = DefenseSpec(kind=kind)
        module = build_defense(spec)
        assert module.kind == kind and type(module)(**module.config()).config() == module.config()
        assert spec.label().startswith(kind)


def test_spec_lists_every_problem_with_its_path():
    doc = {"defenses": [
        {"kind": "jpeg", "quality": 200},
        {"kind": "bit_depth", "bits": 0},
        {"kind": "blur"},
        {"kind": "median", "bits": 3},
        {"kind": "resize_pad", "eot_draws": 5},
        {"kind": "denoiser", "train_eps": [0.03]},
        {"kind": "detector", "fpr": 0.9, "colour": 1},
    ]}
    with pytest.raises(InvalidInput) as err:
        validate_model(_Ladder, doc, what="invalid spec")
    locs = {p["loc"] for p in err.value.problems}
    assert {"defenses[0].quality", "defenses[1].bits", "defenses[2].kind", "defenses[3]", "defenses[4].eot_draws",
            "defenses[5].train_eps", "defenses[6].fpr", "defenses[6].colour"} <= locs
    msgs = " ".join(p["msg"] for p in err.value.problems)
    assert "median does not use bits" in msgs and "unknown defense kind 'blur'" in msgs and "1/255" in msgs


def test_spec_resolves_defaults_per_kind():
    assert DefenseSpec(kind="median").module_params() == {"window": 3}
    assert DefenseSpec(kind="detector").module_params()["window"] == 2
    assert DefenseSpec(kind="denoiser", train_eps=[8, 4, 8]).fit_params()["train_eps"] == [4.0, 8.0]
    assert DefenseSpec(kind="denoiser").fit_params()["train_eps"] == [8.0]
    spec = DefenseSpec(kind="detector")
    spec.fit_params()["tpr_eps"] = 1  # the defaults are not shared state
    assert DefenseSpec(kind="detector").fit_params()["tpr_eps"] == 8.0
    assert json.loads(json.dumps(DefenseSpec(kind="denoiser").params()))["train_eps"] == [8.0]


def test_the_spec_validates_without_torch():
    code = ("import sys; from advrec_common.vision.defenses.spec import DefenseSpec; "
            "DefenseSpec(kind='detector', fpr=0.1); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the artifact -----------------------------------------------------------------------------------
def test_artifact_round_trip_keeps_weights_and_threshold(store, images, model):
    torch.manual_seed(2)
    den = Denoiser(width=8, depth=3)
    torch.nn.init.normal_(den.residual[-1].weight, std=0.05)
    for key, module, spec in [("a" * 64, den, DefenseSpec(kind="denoiser", width=8, depth=3)),
                              ("b" * 64, Detector(threshold=0.125), DefenseSpec(kind="detector")),
                              ("c" * 64, Jpeg(40), DefenseSpec(kind="jpeg", quality=40))]:
        with store.writing(key, {"kind": "defense"}) as out:
            write_defense_artifact(out, module, spec, {"note": 1}, extractor="e" * 64)
        loaded = load_defense_artifact(store, key)
        assert type(loaded) is type(module) and loaded.config() == module.config()
        assert torch.equal(loaded.transform(images), module.transform(images))
    with pytest.raises(InvalidInput, match="fitted for extractor"):
        load_defense_artifact(store, "b" * 64, extractor="f" * 64)
    assert load_defense_artifact(store, "a" * 64, extractor="f" * 64) is not None  # a denoiser purifies for any


def test_a_corrupt_artifact_is_a_bad_checkpoint(tmp_path):
    with pytest.raises(BadCheckpoint, match="not a defense artifact"):
        load_defense(tmp_path)
    den = Denoiser(width=4, depth=2)
    write_defense_artifact(tmp_path, den, DefenseSpec(kind="denoiser", width=4, depth=2))
    (tmp_path / "weights.pt").write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(BadCheckpoint):
        load_defense(tmp_path)
    with pytest.raises(InvalidInput, match="cannot be stored"):
        write_defense_artifact(tmp_path, den, DefenseSpec(kind="jpeg"))


def test_a_deployed_random_defense_with_a_seed_draws_the_same_whatever_used_the_global_rng():
    """The pipeline's deployed resize-and-pad draws from its own seeded generator (the global RNG is untouched and
    does not matter); without a seed it draws from the global RNG, as a live service's uploads do."""
    import torch

    from advrec_common.vision.defenses.defended import defend
    from advrec_common.vision.defenses.resize_pad import ResizePad
    from advrec_common.vision.model import ImageModel

    model = ImageModel(torch.nn.Identity(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), 48, ["a"],
                       input_size=32)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def features(seed, history):
        torch.manual_seed(history)
        deployed = defend(model, ResizePad(0.5), seed=seed)
        state = torch.get_rng_state()
        out = [deployed.forward_all(x).features, deployed.forward_all(x).features]
        assert seed is None or torch.equal(torch.get_rng_state(), state)  # the global RNG untouched
        return out

    a, b = features(7, history=1), features(7, history=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])  # the generator advances: another draw per call
    assert not torch.equal(features(8, history=1)[0], a[0])
    assert not torch.equal(features(None, history=1)[0], features(None, history=2)[0])
    assert defend(model, ResizePad(0.5), adaptive=True, seed=7).generator is None  # the attacker's EOT draws are its own
