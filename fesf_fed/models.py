"""The diagnostic classifiers sites train on their surrogates, built by name.

In the style of torchvision's model builders: :func:`build_model` looks a name up
in a registry and returns a fresh ``nn.Module`` adapted to the task's number of
classes and input channels (grey surrogates stay one channel). Pretrained
weights are never downloaded: they come from a local file the user names, a
torchvision ImageNet state dict, whose stem is summed to one channel for grey
input and whose head is replaced.

``resnet18`` is the MedMNIST v2 benchmark classifier (Yang et al., Scientific Data 2023).
Below :data:`SMALL_INPUT_BELOW` pixels it has MedMNIST's small-image stem (a 3x3
stride-1 first convolution and no max-pool, as for CIFAR), so 28 px images are not cut
to 7 px before the first residual block; from that size on, torchvision's stem. Its
builder therefore needs the image size: callers pass ``image_size``.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fesf_fed.errors import ConfigError


class SmallCNN(nn.Module):
    """A small CNN for CPU demos and tests: three conv blocks, global pooling, a linear head.

    It normalises with GroupNorm rather than BatchNorm: BatchNorm's running
    statistics are averaged across sites with different data and, on a site's few
    batches, barely move from their initial values, so a federated model evaluates
    badly (Hsieh et al., 2020, "The Non-IID Data Quagmire of Decentralized Machine
    Learning"). GroupNorm has no running statistics.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : int
        1 for grey images, 3 for colour.
    width : int
        Channels of the first block (doubled in each of the next two).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1),
                nn.GroupNorm(min(8, out_channels), out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),  # ceil_mode: odd and tiny sizes keep at least 1 pixel
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


@dataclass(frozen=True)
class _TorchvisionSpec:
    """Where a torchvision classifier's stem conv and head are (its builder has the registry's name)."""

    stem: str
    head: str
    min_size: int


# The smallest input each network accepts: its downsampling must leave at least one pixel.
_TORCHVISION: dict[str, _TorchvisionSpec] = {
    # With the small-image stem (below SMALL_INPUT_BELOW px) it downsamples 8-fold, not 32-fold.
    "resnet18": _TorchvisionSpec("conv1", "fc", 8),
    "vgg16": _TorchvisionSpec("features.0", "classifier.6", 32),
    "resnet34": _TorchvisionSpec("conv1", "fc", 32),
    "mobilenet_v3_large": _TorchvisionSpec("features.0.0", "classifier.3", 32),
    "efficientnet_v2_s": _TorchvisionSpec("features.0.0", "classifier.1", 32),
}

# SmallCNN's first-block width under each of its registered names. The wide one has about 4x the
# multiply-adds at about 2x the CPU time (1.5-2.6x per central cell of the 28 px MedMNIST
# baselines, docs/benchmarks.md): more capacity where a plaintext benchmark asks for it, still a CPU model.
_SMALLCNN_WIDTHS: dict[str, int] = {"smallcnn": 16, "smallcnn_wide": 32}

#: Every model name :func:`build_model` accepts.
MODEL_NAMES: tuple[str, ...] = (*_SMALLCNN_WIDTHS, *_TORCHVISION)
#: ``resnet18`` takes MedMNIST's small-image stem for images smaller than this (px), torchvision's from it on.
#: Torchvision's stem divides the side by 4 and the blocks by 8 more: at 64 px the last block still sees
#: 2x2, at 32 px only 1x1, and 28 px (MedMNIST) would reach the first block as 7x7.
SMALL_INPUT_BELOW = 64


def min_image_size(name: str) -> int:
    """The smallest square image side the named model accepts."""
    _check_name(name)
    return 8 if name in _SMALLCNN_WIDTHS else _TORCHVISION[name].min_size


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ConfigError(f"model: unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def _load_state(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"model weights: {weights} not found; name a local torchvision .pth file") from None
    except Exception as exc:  # noqa: BLE001  torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"model weights: {weights} cannot be read by torch.load ({exc})") from None


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's size (kernel, stride, padding), which torch types as any length, as the pair it is."""
    first, second = values
    return first, second


def _stem_for(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The stem conv for ``in_channels`` inputs; a grey stem sums the RGB kernels.

    Summing keeps a pretrained stem's response to a grey image equal to its
    response to that image replicated on three channels.
    """
    stem = nn.Conv2d(
        in_channels,
        conv.out_channels,
        _pair(conv.kernel_size),
        stride=_pair(conv.stride),
        padding=conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        stem.weight.copy_(conv.weight if in_channels == conv.in_channels else conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None and stem.bias is not None:
            stem.bias.copy_(conv.bias)
    return stem


def _small_input_stem(model: nn.Module, in_channels: int) -> None:
    """Give a torchvision ResNet MedMNIST's stem for small images: 3x3 stride-1 conv, no max-pool.

    The new conv starts from fresh weights: an ImageNet 7x7 stride-2 kernel has no 3x3
    stride-1 equivalent, so pretrained weights give the rest of the network only.
    """
    conv = model.get_submodule("conv1")
    assert isinstance(conv, nn.Conv2d)
    model.set_submodule("conv1", nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False))
    model.set_submodule("maxpool", nn.Identity())


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    weights: Path | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build a classifier by name, adapted to the number of classes, input channels and image size.

    Parameters
    ----------
    name : str
        One of ``MODEL_NAMES``: ``smallcnn`` (:class:`SmallCNN`, width 16), ``smallcnn_wide``
        (width 32), ``resnet18``, ``vgg16``, ``resnet34``, ``mobilenet_v3_large`` or
        ``efficientnet_v2_s``.
    num_classes : int
        Number of output logits (at least 2).
    in_channels : int
        1 (grey) or 3 (colour).
    weights : Path, optional
        A local torchvision state dict of the same architecture (e.g. its ImageNet
        weights); nothing is downloaded. The head is replaced, so only the backbone
        is taken from it. Not available for ``smallcnn`` and ``smallcnn_wide``.
    image_size : int, optional
        The side of the square images the model will see. ``resnet18`` chooses its stem
        by it (below :data:`SMALL_INPUT_BELOW` px MedMNIST's small-image stem), so every
        builder of one run's model must pass the same size; None means a large image.
        Other models only check it against :func:`min_image_size`.

    Returns
    -------
    torch.nn.Module
        A new model on the CPU, in training mode.

    Raises
    ------
    ConfigError
        For an unknown name, bad sizes, or a weights file that does not fit.
    """
    _check_name(name)
    if num_classes < 2:
        raise ConfigError(f"model: num_classes must be at least 2, got {num_classes}")
    if in_channels not in (1, 3):
        raise ConfigError(f"model: in_channels must be 1 or 3, got {in_channels}")
    if image_size is not None and image_size < min_image_size(name):
        raise ConfigError(
            f"model: {name} needs images of at least {min_image_size(name)} px, got {image_size}; "
            "choose a larger image_size or another model"
        )
    if name in _SMALLCNN_WIDTHS:
        if weights is not None:
            raise ConfigError(f"model weights: {name} has no pretrained weights; leave the weights file out")
        return SmallCNN(num_classes, in_channels, _SMALLCNN_WIDTHS[name])
    spec = _TORCHVISION[name]
    # Imported here, not at the top: importing torchvision takes about 1.5 s, and a deployed
    # site pays it in every message, since Flower starts a new ClientApp process for each.
    import torchvision.models

    model = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        state, expected = _load_state(weights), model.state_dict()
        misfits = [key for key in expected if key not in state or state[key].shape != expected[key].shape]
        misfits += [key for key in state if key not in expected]
        if misfits:
            raise ConfigError(
                f"model weights: {weights} is not a torchvision {name} state dict "
                f"({len(misfits)} tensors missing, extra or of another shape, e.g. {misfits[0]}); "
                f"use the file made for {name}"
            )
        model.load_state_dict(state)
    if name == "resnet18" and image_size is not None and image_size < SMALL_INPUT_BELOW:
        _small_input_stem(model, in_channels)
    else:
        model.set_submodule(spec.stem, _stem_for(model.get_submodule(spec.stem), in_channels))
    model.set_submodule(spec.head, nn.Linear(model.get_submodule(spec.head).in_features, num_classes))
    return model
