"""Weights files and starting weights: the contract's format, TORCH_HOME, earlier models."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torchvision import models

from app.core import registry
from app.core.config import Settings
from app.core.exports import describe
from tests.support.webserver import serving
from worker.jobspec import JobFailure, fetch_weights
from worker.training.backbones import build_model, input_normalisation
from worker.training.checkpoint import read_metadata, save_weights, weights_metadata
from worker.training.spec import IMAGENET_MEAN, IMAGENET_STD, InitWeights, TrainSpec
from worker.training.trainer import _loss

CLASSES = ("cat", "dog", "eel")


def test_weights_file_round_trips_into_plain_torchvision(tmp_path: Path) -> None:
    spec = TrainSpec(backbone="resnet18", classes=CLASSES, image_size=64)
    model, _ = build_model(spec)
    model = model.to(memory_format=torch.channels_last)  # saved tensors must come out contiguous
    path = tmp_path / "w.safetensors"
    sha256 = save_weights(path, model.state_dict(), weights_metadata(spec, job_id="job_x", epoch=3))
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    fresh = models.get_model("resnet18", weights=None, num_classes=3)
    fresh.load_state_dict(load_file(path), strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor)
    meta = read_metadata(path)
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["backbone"] == "resnet18" and meta["image_size"] == "64" and meta["epoch"] == "3"
    assert json.loads(meta["mean"]) == list(spec.mean) and len(json.loads(meta["std"])) == 3
    assert not list(tmp_path.glob(".*tmp")), "no temp file left behind"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _trained_from(
    backbone: str, resolved: registry.ResolvedWeights, reference: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Put `reference` where torchvision keeps `resolved`'s file; the state of a model the
    service builds from it."""
    Path(resolved.path).parent.mkdir(parents=True)
    torch.save(reference, resolved.path)
    init = InitWeights(source="torchvision", name=resolved.name)
    model, _ = build_model(TrainSpec(backbone=backbone, classes=CLASSES, init=init))
    return model.state_dict()


def test_pretrained_weights_come_from_torch_home(torch_home: Path) -> None:
    resolved = registry.resolve_weights("resnet18", "DEFAULT")
    assert resolved.name == "ResNet18_Weights.IMAGENET1K_V1"
    assert resolved.path.startswith(str(torch_home)) and not resolved.present
    # Stand-in for the real ImageNet file: same name, same format, our own numbers.
    torch.manual_seed(7)
    reference = models.get_model("resnet18", weights=None).state_dict()
    state = _trained_from("resnet18", resolved, reference)
    assert registry.resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1").present
    assert torch.equal(state["layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"])
    assert torch.equal(state["bn1.running_var"], reference["bn1.running_var"])
    assert state["fc.weight"].shape == (3, 512)


@pytest.mark.parametrize(
    ("backbone", "aux_fc", "body_key"),
    [
        ("googlenet", "aux1.fc2.weight", "inception5b.branch1.conv.weight"),
        ("inception_v3", "AuxLogits.fc.weight", "Mixed_7c.branch1x1.conv.weight"),
    ],
)
def test_pretrained_weights_fit_whatever_they_do_with_the_auxiliary_heads(
    torch_home: Path, backbone: str, aux_fc: str, body_key: str
) -> None:
    """torchvision's builder drops GoogLeNet's aux1/aux2 from a model built with weights, and
    Inception v3's keeps ImageNet's 1000 outputs: the model this service trains keeps its
    own, freshly initialised, instead of refusing the weights."""
    resolved = registry.resolve_weights(backbone, "DEFAULT")
    torch.manual_seed(3)  # the file as torchvision ships it: auxiliary heads included
    reference = models.get_model(
        backbone, weights=None, aux_logits=True, init_weights=False
    ).state_dict()
    state = _trained_from(backbone, resolved, reference)
    assert torch.equal(state[body_key], reference[body_key])
    assert state[aux_fc].shape[0] == 3 != reference[aux_fc].shape[0]  # there, for training, fresh


def test_unknown_weight_names_raise_key_error() -> None:
    with pytest.raises(KeyError):
        registry.resolve_weights("resnet18", "IMAGENET9K")
    with pytest.raises(KeyError):
        registry.resolve_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V1")


@pytest.mark.parametrize("same_classes", [True, False])
def test_start_from_an_earlier_model_file(tmp_path: Path, same_classes: bool) -> None:
    first = TrainSpec(backbone="resnet18", classes=CLASSES)
    source, _ = build_model(first)
    path = tmp_path / "m.safetensors"
    save_weights(path, source.state_dict(), weights_metadata(first, job_id="j", epoch=1))
    classes = CLASSES if same_classes else ("a", "b")
    spec = TrainSpec(
        backbone="resnet18",
        classes=classes,
        init=InitWeights(source="file", path=str(path), keep_head=same_classes),
    )
    model, _ = build_model(spec)
    assert torch.equal(
        model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"]
    )
    assert torch.equal(model.fc.weight, source.fc.weight) == same_classes


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    other, _ = build_model(TrainSpec(backbone="mobilenet_v3_small", classes=CLASSES))
    path = tmp_path / "m.safetensors"
    save_weights(path, other.state_dict(), {})
    spec = TrainSpec(
        backbone="resnet18", classes=CLASSES, init=InitWeights(source="file", path=str(path))
    )
    with pytest.raises(ValueError, match="do not fit"):
        build_model(spec)


def test_googlenet_trains_its_auxiliary_heads_with_the_blocks_they_read() -> None:
    """`partial` counts the body's blocks; GoogLeNet's auxiliary heads are none of them. They
    were counted as its last two 'blocks', so trainable_layers=1 trained only aux2 and fc."""
    spec = TrainSpec(backbone="googlenet", classes=CLASSES, strategy="partial")
    model, freezing = build_model(spec)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"inception5b", "fc"} and freezing.total_blocks == 12
    model, _ = build_model(TrainSpec(**{**spec.__dict__, "trainable_layers": 4}))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"inception4d", "aux2", "inception4e", "inception5a", "inception5b", "fc"}


def test_the_auxiliary_losses_of_googlenet_and_inception_count() -> None:
    # GoogLeNet names its auxiliary outputs aux_logits1/2, not aux_logits: they were dropped.
    criterion = torch.nn.CrossEntropyLoss()
    target = torch.tensor([0, 2])
    for backbone, size, weights in (("googlenet", 64, (0.3, 0.3)), ("inception_v3", 299, (0.4,))):
        torch.manual_seed(0)
        model, _ = build_model(TrainSpec(backbone=backbone, classes=CLASSES))
        out = model.train()(torch.rand(2, 3, size, size))
        auxes = [v for k, v in out._asdict().items() if k != "logits" and v is not None]
        expected = criterion(out.logits, target) + sum(
            w * criterion(a, target) for w, a in zip(weights, auxes, strict=True)
        )
        assert torch.allclose(_loss(out, target, criterion), expected)


def test_tf_ported_weights_train_and_serve_on_their_own_input_range(tmp_path: Path) -> None:
    """torchvision feeds GoogLeNet's and Inception v3's ImageNet weights [-1, 1] pixels
    (transform_input, only when it loads them itself); the file this service writes loads
    into a model without that step, so the normalisation carries it instead: the same input
    the weights were trained on, in training, in predict and in exports."""
    tv = InitWeights(source="torchvision", name="GoogLeNet_Weights.IMAGENET1K_V1")
    half = ((0.5,) * 3, (0.5,) * 3)
    assert input_normalisation("googlenet", tv) == half
    assert input_normalisation("resnet18", InitWeights(source="torchvision", name="x")) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert input_normalisation("googlenet", InitWeights()) == (IMAGENET_MEAN, IMAGENET_STD)
    spec = TrainSpec(backbone="googlenet", classes=CLASSES, mean=half[0], std=half[1])
    path = tmp_path / "earlier.safetensors"
    save_weights(path, {"w": torch.zeros(1)}, weights_metadata(spec, job_id="j", epoch=1))
    assert input_normalisation("googlenet", InitWeights(source="file", path=str(path))) == half
    row = SimpleNamespace(classes=list(CLASSES), image_size=32, backbone="googlenet")
    info = describe(row, path)  # type: ignore[arg-type]
    assert (info["mean"], info["std"]) == ([0.5] * 3, [0.5] * 3)


def test_partial_with_every_block_trains_the_whole_network() -> None:
    # A ViT's class token and position embedding belong to no block: they stayed frozen
    # even with trainable_layers covering every block.
    spec = TrainSpec(backbone="vit_b_16", classes=CLASSES, strategy="partial")
    model, freezing = build_model(TrainSpec(**{**spec.__dict__, "trainable_layers": 99}))
    assert all(p.requires_grad for p in model.parameters()) and not freezing.frozen
    assert freezing.trainable_blocks == freezing.total_blocks > 1
    model, _ = build_model(TrainSpec(**{**spec.__dict__, "trainable_layers": 2}))
    assert not model.class_token.requires_grad and model.heads.head.weight.requires_grad


def test_a_missing_weights_file_is_fetched_before_training_or_the_job_fails(
    torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = registry.resolve_weights("resnet18", "DEFAULT")
    data = b"weights"
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / name).write_bytes(data)
    path = str(torch_home / "hub" / "checkpoints" / name)
    spec = TrainSpec(
        backbone="resnet18", classes=CLASSES, init=InitWeights("torchvision", real.name)
    )
    with serving(tmp_path / "web") as web:
        for url, download, expected in (
            (f"{web}/{name}", False, "needs"),
            (f"{web}/missing.pth", True, "HTTPError"),
        ):
            resolved = registry.ResolvedWeights(real.name, path, url)
            monkeypatch.setattr(registry, "resolve_weights", lambda *_, r=resolved: r)
            settings = Settings(data_dir=tmp_path, weights_download=download)
            with pytest.raises(JobFailure, match=expected) as failed:
                fetch_weights(settings, spec, lambda: None)
            assert failed.value.code == "weights_unavailable"
        monkeypatch.setattr(
            registry,
            "resolve_weights",
            lambda *_: registry.ResolvedWeights(real.name, path, f"{web}/{name}"),
        )
        fetch_weights(Settings(data_dir=tmp_path), spec, lambda: None)
    assert Path(path).read_bytes() == data
