"""The IQEM networks: the generator G: S -> K and the patch discriminator D_K (Eq. 5).

G follows Deep Perceptual Enhancement (Sharif et al.): an encoder-decoder whose
decoder reads the encoder's features through gated skip connections, with residual
blocks at the bottleneck and a global residual. Its last convolution starts at zero,
so an untrained G is the identity and training only moves it as far as the losses
ask (docs/design.md, IQEM). Both networks are fully convolutional and work at any size.

G reads the image's host beside x_sy. The paper's G sees x_sy alone, which is enough
when domain K is a single host image that G can learn by heart; with a bank of hosts an
x_sy does not say which host it came from, and an unconditional G cannot carry it there
(measured: docs/design.md, IQEM). The host is the site's own, so nothing is revealed.
"""

import torch
from torch import nn
from torch.nn.functional import interpolate
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["Discriminator", "Generator", "IdentityGenerator"]


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.LeakyReLU(0.2), _conv(channels, channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.body(features)


class _GatedUp(nn.Module):
    """Upsample to the skip's exact size, then add the skip through a learnt gate.

    The convolution that halves the channels runs before the interpolation, at the
    lower resolution, where it costs a quarter as much. The gate sees both the
    decoder's and the encoder's features, so the decoder decides per pixel how much
    encoder detail passes (skip * sigmoid(gate)).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(in_channels, out_channels), nn.LeakyReLU(0.2))
        self.gate = nn.Conv2d(2 * out_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Interpolating to the skip's size (not by a factor 2) is what makes odd sizes work.
        upsampled = interpolate(self.conv(features), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        gate = torch.sigmoid(self.gate(torch.cat([upsampled, skip], dim=1)))
        return upsampled + skip * gate


class Generator(nn.Module):
    """The IQEM generator: ``G(x, h) = clamp(x + r(x, h), 0, 1)`` for x_sy ``x`` and its host ``h``; the identity before training.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for grey, 3 for colour) of x_sy and of the host; the output has the same.
    base_channels : int
        Channels at full resolution; doubled at each of the two downsamplings, so most
        of the work happens at a quarter of the resolution with ``4 * base_channels``.
    res_blocks : int
        Residual blocks at the bottleneck (0 allowed).

    Notes
    -----
    Inputs ``(B, in_channels, H, W)`` float in [0, 1], any H and W (odd ones too);
    output of the same shape, in [0, 1].
    """

    def __init__(self, in_channels: int, base_channels: int = 16, res_blocks: int = 4) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, base_channels=base_channels)
        if res_blocks < 0:
            raise ValueError(f"res_blocks must be at least 0, got {res_blocks}")
        width = base_channels
        self.stem = nn.Sequential(_conv(2 * in_channels, width), nn.LeakyReLU(0.2))
        self.down1 = nn.Sequential(_conv(width, 2 * width, stride=2), nn.LeakyReLU(0.2))
        self.down2 = nn.Sequential(_conv(2 * width, 4 * width, stride=2), nn.LeakyReLU(0.2))
        self.bottleneck = nn.Sequential(*(_ResidualBlock(4 * width) for _ in range(res_blocks)))
        self.up1 = _GatedUp(4 * width, 2 * width)
        self.up2 = _GatedUp(2 * width, width)
        self.head = _conv(width, in_channels)
        # A zero residual makes the untrained G the identity.
        nn.init.zeros_(self.head.weight)
        assert self.head.bias is not None  # _conv's convs have a bias
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, hosts: torch.Tensor) -> torch.Tensor:
        if hosts.shape != images.shape:
            raise ValueError(f"hosts must have the images' shape {tuple(images.shape)}, got {tuple(hosts.shape)}")
        full = self.stem(torch.cat([images, hosts], dim=1))
        half = self.down1(full)
        features = self.bottleneck(self.down2(half))
        features = self.up2(self.up1(features, half), full)
        return (images + self.head(features)).clamp(0.0, 1.0)


class IdentityGenerator(nn.Module):
    """G switched off (``iqem.steps`` 0): x_su is x_sy, the ablation of the paper's Table 1."""

    def forward(self, images: torch.Tensor, hosts: torch.Tensor) -> torch.Tensor:
        return images


class Discriminator(nn.Module):
    """Unconditional PatchGAN D_K: one real-vs-fake logit per image patch.

    Spectral normalisation (rather than instance normalisation) keeps D stable on the
    1 x 1 and 2 x 2 feature maps that small images leave after downsampling.

    Parameters
    ----------
    in_channels : int
        Image channels.
    base_channels : int
        Channels of the first layer; doubled per downsampling, capped at 8x.
    layers : int
        Number of stride-2 4 x 4 convolutions. Inputs must be at least
        :meth:`min_size` pixels on each side; :meth:`layers_for` picks the most a
        given image size allows.

    Notes
    -----
    Input ``(B, in_channels, H, W)``; output ``(B, 1, h, w)`` logits with h, w >= 1.
    """

    def __init__(self, in_channels: int, base_channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, base_channels=base_channels, layers=layers)
        self.layers = layers
        blocks: list[nn.Module] = []
        channels = in_channels
        for index in range(layers + 1):
            # After the stride-2 layers, one stride-1 layer widens the receptive field (pix2pix).
            stride = 2 if index < layers else 1
            out_channels = base_channels * min(2**index, 8)
            blocks += [spectral_norm(nn.Conv2d(channels, out_channels, 4, stride, padding=1)), nn.LeakyReLU(0.2)]
            channels = out_channels
        blocks.append(spectral_norm(nn.Conv2d(channels, 1, 4, stride=1, padding=1)))
        self.body = nn.Sequential(*blocks)

    @staticmethod
    def min_size(layers: int) -> int:
        """Smallest image side that ``layers`` downsamplings leave a 1 x 1 output for."""
        # Each stride-2 4x4 conv maps n to n // 2; each of the two stride-1 4x4 convs to n - 1.
        return 3 * 2**layers

    @staticmethod
    def layers_for(size: int, layers: int) -> int:
        """The most downsamplings, up to ``layers``, that images of side ``size`` allow.

        Raises
        ------
        ValueError
            If ``size`` is below ``min_size(1)`` (6 pixels).
        """
        if size < Discriminator.min_size(1):
            raise ValueError(f"images of {size} px are too small for the discriminator; use at least 6 px")
        while Discriminator.min_size(layers) > size:
            layers -= 1
        return layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        smallest = min(images.shape[-2:])
        if smallest < self.min_size(self.layers):
            raise ValueError(
                f"a {self.layers}-layer discriminator needs images of at least {self.min_size(self.layers)} px, "
                f"got {smallest} px; use Discriminator.layers_for(size, layers) layers"
            )
        return self.body(images)
