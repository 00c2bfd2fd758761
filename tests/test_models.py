"""The classifier registry: every model builds for grey and colour input, weights only from local files."""

from pathlib import Path

import pytest
import torch
import torchvision

from fesf_fed.errors import ConfigError
from fesf_fed.models import MODEL_NAMES, build_model, min_image_size


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("in_channels,num_classes", [(1, 2), (3, 5)])
def test_every_model_classifies_images_of_its_smallest_size(name: str, in_channels: int, num_classes: int) -> None:
    size = min_image_size(name)
    model = build_model(name, num_classes, in_channels, image_size=size).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, in_channels, size, size))
    assert logits.shape == (2, num_classes)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size,stem_kernel", [(28, 3), (64, 7)])
def test_resnet18_has_medmnists_stem_for_small_images_and_torchvisions_for_larger(
    in_channels: int, size: int, stem_kernel: int
) -> None:
    model = build_model("resnet18", 7, in_channels, image_size=size).eval()
    assert model.get_submodule("conv1").kernel_size == (stem_kernel, stem_kernel)
    assert isinstance(model.get_submodule("maxpool"), torch.nn.Identity) == (size < 64)
    with torch.no_grad():
        assert model(torch.rand(3, in_channels, size, size)).shape == (3, 7)


def test_resnet18_at_28_pixels_takes_the_backbone_of_local_weights_and_a_new_stem(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model("resnet18", 2, 1, weights=tmp_path / "resnet18.pth", image_size=28)
    loaded = model.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert loaded["conv1.weight"].shape == (64, 1, 3, 3) and loaded["fc.weight"].shape == (2, 512)


@pytest.mark.parametrize("name", ["smallcnn", "smallcnn_wide"])
def test_the_small_cnns_take_any_size_from_8_pixels(name: str) -> None:
    model = build_model(name, 3, 1).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 8, 8)).shape == (1, 3) and model(torch.rand(1, 1, 37, 23)).shape == (1, 3)


def test_the_wide_small_cnn_doubles_every_blocks_channels() -> None:
    def channels(name: str) -> list[int]:
        model = build_model(name, 2, 1)
        return [layer.out_channels for layer in model.modules() if isinstance(layer, torch.nn.Conv2d)]

    assert channels("smallcnn") == [16, 32, 64] and channels("smallcnn_wide") == [32, 64, 128]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"name": "resnet50", "num_classes": 2},
            "unknown model 'resnet50'; choose one of smallcnn, smallcnn_wide, resnet18, vgg16",
        ),
        ({"name": "resnet34", "num_classes": 2, "image_size": 28}, "resnet34 needs images of at least 32 px, got 28"),
        ({"name": "resnet34", "num_classes": 1}, "num_classes must be at least 2"),
        ({"name": "resnet34", "num_classes": 2, "in_channels": 2}, "in_channels must be 1 or 3"),
        ({"name": "smallcnn", "num_classes": 2, "weights": Path("x.pth")}, "smallcnn has no pretrained weights"),
        (
            {"name": "smallcnn_wide", "num_classes": 2, "weights": Path("x.pth")},
            "smallcnn_wide has no pretrained weights",
        ),
        ({"name": "resnet34", "num_classes": 2, "weights": Path("/no/such.pth")}, "/no/such.pth not found"),
    ],
)
def test_bad_requests_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(**kwargs)


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "mobilenet.pth"
    torch.save(state, path)
    return path, state


def test_local_weights_give_the_backbone_and_a_new_head(mobilenet_weights: tuple[Path, dict]) -> None:
    path, state = mobilenet_weights
    model = build_model("mobilenet_v3_large", 4, 3, weights=path)
    loaded = model.state_dict()
    assert torch.equal(loaded["features.5.block.0.0.weight"], state["features.5.block.0.0.weight"])
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])
    assert loaded["classifier.3.weight"].shape == (4, 1280)


def test_a_grey_model_sees_a_grey_image_as_the_rgb_model_sees_it_replicated(
    mobilenet_weights: tuple[Path, dict],
) -> None:
    path, _ = mobilenet_weights
    grey, colour = build_model("mobilenet_v3_large", 2, 1, path), build_model("mobilenet_v3_large", 2, 3, path)
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        grey_stem, colour_stem = grey.get_submodule("features.0"), colour.get_submodule("features.0")
        torch.testing.assert_close(grey_stem(image), colour_stem(image.expand(-1, 3, -1, -1)))


def test_weights_of_another_architecture_are_refused(mobilenet_weights: tuple[Path, dict]) -> None:
    path, _ = mobilenet_weights
    with pytest.raises(ConfigError, match="is not a torchvision efficientnet_v2_s state dict"):
        build_model("efficientnet_v2_s", 2, 3, weights=path)
